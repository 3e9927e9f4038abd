//! The `longtail` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use longtail::gpu::{Backend, Gpu, GpuOptions, list_adapters};
use longtail::tune::TuneMode;

mod cli;

/// Train long-tailed image classifiers end to end on any GPU (Vulkan, Metal, DX12, GL).
#[derive(Parser)]
#[command(name = "longtail", version, about)]
struct Cli {
    /// Graphics backend to use.
    #[arg(long, global = true, env = "LONGTAIL_BACKEND", value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Adapter: index from `longtail devices`, or a name substring.
    #[arg(long, global = true, env = "LONGTAIL_ADAPTER")]
    adapter: Option<String>,
    /// How kernel variants are chosen: off (built-in heuristic), cached (time the candidates on
    /// first use per adapter and shape, then reuse the cached choice), full (time them again).
    #[arg(long, global = true, env = "LONGTAIL_TUNE", value_enum, default_value_t = TuneMode::Cached)]
    tune: TuneMode,
    /// Directory of the tune cache (default: $XDG_CACHE_HOME/longtail/tune or
    /// ~/.cache/longtail/tune).
    #[arg(long, global = true, env = "LONGTAIL_TUNE_CACHE")]
    tune_cache: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter with its limits and features.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time kernels: median ms, GFLOP/s and GB/s per kernel and shape.
    Bench(cli::bench::BenchArgs),
    /// Train a small MLP on synthetic blobs (a smoke test of the whole stack).
    Mlp(cli::mlp::MlpArgs),
    /// Train a long-tailed classifier (see assets/presets; every config key is a flag).
    Train(Box<cli::train::TrainArgs>),
    /// Evaluate a checkpoint: Many/Medium/Few/All and per-class accuracy.
    Eval(Box<cli::train::EvalArgs>),
    /// Draw a run's report: RUN_DIR/report/ (PNG charts and index.html).
    Report(cli::report::ReportArgs),
    /// Feature diagnostics of a checkpoint: covariance spectra before/after whitening, per-class
    /// feature and classifier norms, whitening error (JSON and PNG).
    Diagnose(Box<cli::report::DiagnoseArgs>),
    /// Time every kernel variant of a model's training step and cache the fastest per shape.
    Tune(cli::tune::TuneArgs),
    /// Run the ablation rows over seeds at a preset's scale (resumable), then tabulate and plot.
    Ablate(Box<cli::report::AblateArgs>),
}

fn run(cli: Cli) -> Result<()> {
    let opts = GpuOptions {
        backend: cli.backend,
        adapter: cli.adapter,
    };
    let (tune, tune_cache) = (cli.tune, cli.tune_cache);
    // The device, with its tuner set as the flags say.
    let open = |opts: &GpuOptions| -> Result<Gpu> {
        let gpu = Gpu::new(opts)?;
        gpu.tuner.configure(tune, tune_cache.clone())?;
        Ok(gpu)
    };
    match cli.command {
        Command::Devices { json } => {
            let list = list_adapters(opts.backend);
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                // Reuse the library's no-adapter message (how to get one).
                Gpu::new(&opts)?;
            } else {
                for a in &list {
                    println!("{a}");
                }
                if list.iter().any(|a| a.device_type == "Cpu")
                    && let Some((n, ours)) = longtail::gpu::llvmpipe_threads()
                {
                    let by = if ours {
                        "set by longtail: two per core, see README's performance section"
                    } else {
                        "from the environment"
                    };
                    println!("llvmpipe compute threads: LP_NUM_THREADS={n} ({by})");
                }
            }
            Ok(())
        }
        Command::Bench(args) => cli::bench::run(&open(&opts)?, args),
        Command::Mlp(args) => cli::mlp::run(&open(&opts)?, args),
        Command::Train(args) => cli::train::run(&open(&opts)?, *args),
        Command::Eval(args) => cli::train::eval(&open(&opts)?, *args),
        Command::Tune(args) => cli::tune::run(&open(&opts)?, args),
        Command::Report(args) => cli::report::report(args),
        Command::Diagnose(args) => cli::report::diagnose(&open(&opts)?, *args),
        Command::Ablate(args) => cli::report::ablate(&open(&opts)?, *args),
    }
}

fn main() -> ExitCode {
    // Before any thread exists and before the first adapter opens (see its doc).
    longtail::gpu::oversubscribe_llvmpipe();
    longtail::rundir::fault_from_env();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
