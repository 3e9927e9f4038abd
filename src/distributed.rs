//! Several machines (`mpirun -n N longtail train --distributed mpi ...`): one process per GPU,
//! joined through MPI (the `mpi` crate against the system's Open MPI, cargo feature `mpi`). A
//! process takes the adapter of its rank on its machine, computes its slice of every batch, and
//! adds its collectives' sums (gradients, whitening statistics, sync-BN) with the others' by
//! `MPI_Allreduce`; process 0 evaluates and writes the run directory.

use std::rc::Rc;

use anyhow::Result;

use crate::parallel::Processes;

/// Join the MPI job this process was started in (`mpirun`), or fail with how to get one.
pub fn join() -> Result<Rc<dyn Processes>> {
    imp::join()
}

#[cfg(feature = "mpi")]
mod imp {
    use std::rc::Rc;

    use anyhow::{Result, bail};
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::CommunicatorCollectives;

    use crate::parallel::Processes;

    /// The MPI world of this run; MPI is finalised when it is dropped.
    struct Mpi {
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
        local_rank: usize,
    }

    pub fn join() -> Result<Rc<dyn Processes>> {
        let Some(universe) = mpi::initialize() else {
            bail!("MPI was already initialised in this process");
        };
        let world = universe.world();
        // The processes that share this machine's memory: the rank among them picks the GPU.
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(Rc::new(Mpi {
            _universe: universe,
            world,
            local_rank,
        }))
    }

    impl Processes for Mpi {
        fn size(&self) -> usize {
            self.world.size() as usize
        }

        fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        fn local_rank(&self) -> usize {
            self.local_rank
        }

        fn abort(&self) {
            self.world.abort(1)
        }

        fn sum(&self, v: &mut [f64]) -> Result<()> {
            let send = v.to_vec();
            self.world
                .all_reduce_into(&send[..], v, SystemOperation::sum());
            Ok(())
        }
    }
}

#[cfg(not(feature = "mpi"))]
mod imp {
    use std::rc::Rc;

    use anyhow::{Result, bail};

    use crate::parallel::Processes;

    pub fn join() -> Result<Rc<dyn Processes>> {
        bail!(
            "this longtail was built without MPI: build it with `cargo build --release \
             --features mpi` (needs Open MPI and libclang: apt-get install libopenmpi-dev \
             openmpi-bin libclang-dev), then start it with mpirun"
        )
    }
}
