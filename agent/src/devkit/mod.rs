//! Developer tools, behind the `devkit` feature (the shipped `bpfnet` binary has none of it):
//! a testbed that loads the real datapath into a throwaway namespace and bpffs directory, the
//! BPF_PROG_TEST_RUN harness, the per-program cost bench (`bpfnet-devkit program-cost`), the
//! map update timer (`bpfnet-devkit map-update-cost`), the bench's structural floor
//! (`bpfnet-devkit floor-attach`), and the crafted-packet tests of the
//! datapath.
#[cfg(test)]
mod datapath_tests;
pub mod floor_attach;
pub mod map_update_cost;
pub mod netns;
pub mod program_cost;
pub mod testbed;
pub mod testrun;
