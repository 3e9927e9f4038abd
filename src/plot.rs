//! PNG charts with `plotters` (bitmap backend; text through `ab_glyph` with a TrueType font found
//! on the system), encoded by `image` and written atomically: line charts, a log-x scatter, a
//! heatmap and grouped bars with error bars — what the run report, `diagnose` and `ablate` draw.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Font files tried in order after `LONGTAIL_FONT` (Debian's fonts-dejavu-core, other Linux
/// layouts, macOS, Windows).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Font family name the charts use.
const FAMILY: &str = "sans-serif";

/// A series colour per index (colour-blind-friendly Okabe–Ito order).
pub fn color(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 8] = [
        (0, 114, 178),
        (213, 94, 0),
        (0, 158, 115),
        (204, 121, 167),
        (230, 159, 0),
        (86, 180, 233),
        (240, 228, 66),
        (0, 0, 0),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// Register a TrueType font once (plotters' `ab_glyph` backend loads no system fonts itself).
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let r = FONT.get_or_init(|| {
        let env = std::env::var("LONGTAIL_FONT").ok();
        let mut tried = Vec::new();
        for p in env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
        {
            tried.push(p.to_string());
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                    return Ok(p.to_string());
                }
            }
        }
        Err(format!(
            "no TrueType font for the plots (tried {}): install one (Debian/Ubuntu: apt-get \
             install fonts-dejavu-core) or set LONGTAIL_FONT=/path/to/font.ttf",
            tried.join(", ")
        ))
    });
    r.as_ref().map(|_| ()).map_err(|e| anyhow!("{e}"))
}

/// The drawing area charts are drawn on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draw a `w` x `h` picture with `draw` and write it to `path` as PNG (atomically).
pub fn save_png(
    path: &Path,
    w: u32,
    h: u32,
    draw: impl FnOnce(&Area<'_>) -> Result<()>,
) -> Result<()> {
    ensure_font()?;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(plot_err)?;
        draw(&area)?;
        area.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("bitmap size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    crate::checkpoint::write_atomic(path, &png)
}

/// plotters' errors as anyhow errors.
pub fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// One named line of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn bounds(series: &[Series], log_y: bool) -> (f64, f64, f64, f64) {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, if log_y { 0.1 } else { 0.0 }, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if log_y {
        (x0, x1, y0 / 1.5, y1 * 1.5)
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        (x0, x1, y0 - pad, y1 + pad)
    }
}

/// A line chart with markers and a legend; `y_range` fixes the y axis (else from the data);
/// `log_y` for spectra.
pub fn line_chart(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
    log_y: bool,
) -> Result<()> {
    let (x0, x1, mut y0, mut y1) = bounds(series, log_y);
    if let Some((a, b)) = y_range {
        (y0, y1) = (a, b);
    }
    let mut b = ChartBuilder::on(area);
    b.caption(title, font(20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .label_style(font(13))
                .axis_desc_style(font(14))
                .draw()
                .map_err(plot_err)?;
            for (i, s) in series.iter().enumerate() {
                let c = color(i);
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|p| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                if pts.len() <= 60 {
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(plot_err)?;
                }
            }
            if series.len() > 1 {
                chart
                    .configure_series_labels()
                    .label_font(font(13))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::LowerRight)
                    .draw()
                    .map_err(plot_err)?;
            }
        }};
    }
    if log_y {
        body!(
            b.build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(plot_err)?
        );
    } else {
        body!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(plot_err)?);
    }
    Ok(())
}

/// One labelled point of a scatter.
pub struct Labelled {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// Points over a log-scale x axis (class counts), each with its label beside it; `groups` of
/// points get their own colour and legend entry.
pub fn log_x_scatter(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    groups: &[(String, Vec<Labelled>)],
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    let all: Vec<&Labelled> = groups.iter().flat_map(|g| g.1.iter()).collect();
    let xs = all.iter().map(|p| p.x).filter(|x| *x > 0.0);
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    for x in xs {
        x0 = x0.min(x);
        x1 = x1.max(x);
    }
    if x0 > x1 {
        (x0, x1) = (1.0, 10.0);
    }
    let (y0, y1) = y_range.unwrap_or_else(|| {
        let lo = all.iter().map(|p| p.y).fold(f64::MAX, f64::min);
        let hi = all.iter().map(|p| p.y).fold(f64::MIN, f64::max);
        if lo > hi {
            (0.0, 1.0)
        } else {
            let pad = ((hi - lo) * 0.08).max(1e-6);
            (lo - pad, hi + pad)
        }
    });
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 / 1.6..x1 * 1.6).log_scale(), y0..y1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(font(13))
        .axis_desc_style(font(14))
        .draw()
        .map_err(plot_err)?;
    for (i, (name, pts)) in groups.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(pts.iter().filter(|p| p.x > 0.0).map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Circle::new((0, 0), 5, c.filled())
                    + Text::new(p.label.clone(), (7, -7), font(11))
            }))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
    }
    if groups.len() > 1 {
        chart
            .configure_series_labels()
            .label_font(font(13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// A row-normalised heatmap of `m[row][col]` (a confusion matrix: rows true, columns predicted)
/// with row names on the y axis, column indices on the x axis and, for up to 20 classes, each
/// cell's percentage.
pub fn heatmap(area: &Area<'_>, title: &str, m: &[Vec<u64>], names: &[String]) -> Result<()> {
    let n = m.len();
    if n == 0 {
        bail!("heatmap of an empty matrix");
    }
    let label_w = names.iter().map(|s| s.len()).max().unwrap_or(2).min(24) as u32 * 8 + 20;
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(label_w)
        // Cell i spans [i - 0.5, i + 0.5], so the axis' integer key points fall on cell centres.
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, -0.5f64..n as f64 - 0.5)
        .map_err(plot_err)?;
    let labels = n.min(25);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(labels)
        .y_labels(labels)
        .x_desc("predicted class")
        .y_desc("true class")
        .label_style(font(12))
        .axis_desc_style(font(14))
        .x_label_formatter(&|v| match index_at(*v, n) {
            Some(i) => i.to_string(),
            None => String::new(),
        })
        .y_label_formatter(&|v| match index_at(*v, n) {
            // Row 0 at the top.
            Some(r) => {
                let i = n - 1 - r;
                let s: String = names[i].chars().take(24).collect();
                format!("{s} ({i})")
            }
            None => String::new(),
        })
        .draw()
        .map_err(plot_err)?;
    for (i, row) in m.iter().enumerate() {
        let total: u64 = row.iter().sum::<u64>().max(1);
        let y = (n - 1 - i) as f64;
        for (j, &v) in row.iter().enumerate() {
            let f = v as f64 / total as f64;
            // White to deep blue.
            let c = RGBColor(
                (255.0 - 247.0 * f) as u8,
                (255.0 - 207.0 * f) as u8,
                (255.0 - 148.0 * f) as u8,
            );
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(j as f64 - 0.5, y - 0.5), (j as f64 + 0.5, y + 0.5)],
                    c.filled(),
                )))
                .map_err(plot_err)?;
            if n <= 20 && v > 0 {
                let tc = if f > 0.5 { WHITE } else { BLACK };
                let style = (FAMILY, 12)
                    .into_font()
                    .color(&tc)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{:.0}", 100.0 * f),
                        (j as f64, y),
                        style,
                    )))
                    .map_err(plot_err)?;
            }
        }
    }
    Ok(())
}

/// The index `v` stands on when it is an integer in `0..n` (axis key points), else None.
fn index_at(v: f64, n: usize) -> Option<usize> {
    let r = v.round();
    ((v - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < n).then_some(r as usize)
}

/// One group of bars (a table row): its name and, per bar, (mean, std).
pub struct BarGroup {
    pub name: String,
    pub bars: Vec<Option<(f64, f64)>>,
}

/// Grouped bars with ±std error bars; `bar_names` label the bars of each group (legend).
pub fn grouped_bars(
    area: &Area<'_>,
    title: &str,
    y_desc: &str,
    groups: &[BarGroup],
    bar_names: &[&str],
    y_range: (f64, f64),
) -> Result<()> {
    let g = groups.len().max(1);
    let k = bar_names.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(20))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(60)
        // Group i is centred on x = i, where the axis puts its integer key points.
        .build_cartesian_2d(-0.5f64..g as f64 - 0.5, y_range.0..y_range.1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(g)
        .y_desc(y_desc)
        .label_style(font(12))
        .axis_desc_style(font(14))
        .x_label_formatter(&|v| match index_at(*v, g) {
            Some(i) => groups[i].name.clone(),
            None => String::new(),
        })
        .draw()
        .map_err(plot_err)?;
    let w = 0.8 / k as f64;
    for (b, bname) in bar_names.iter().enumerate() {
        let c = color(b);
        let rects: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, gr)| {
                let (m, _) = gr.bars.get(b).copied().flatten()?;
                let x = i as f64 - 0.4 + b as f64 * w;
                Some(Rectangle::new(
                    [(x, y_range.0), (x + w * 0.9, m.max(y_range.0))],
                    c.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(plot_err)?
            .label(bname.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        let errs: Vec<PathElement<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, gr)| {
                let (m, s) = gr.bars.get(b).copied().flatten()?;
                if s <= 0.0 {
                    return None;
                }
                let x = i as f64 - 0.4 + b as f64 * w + w * 0.45;
                Some(PathElement::new(
                    vec![(x, m - s), (x, m + s)],
                    BLACK.stroke_width(2),
                ))
            })
            .collect();
        chart.draw_series(errs).map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .label_font(font(13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// Whether a PNG holds more than one colour (tests: a chart was drawn, not a blank page).
pub fn png_is_drawn(path: &Path) -> Result<bool> {
    let img = image::open(path)?.to_rgb8();
    let first = *img.get_pixel(0, 0);
    Ok(img.pixels().filter(|p| **p != first).count() > (img.width() * img.height() / 200) as usize)
}
