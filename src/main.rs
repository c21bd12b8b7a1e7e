//! The `sidekey` binary: its allocator ([`memory`]) and [`sidekey::cli`].

use std::process::ExitCode;

mod memory;

fn main() -> ExitCode {
    sidekey::cli::main(memory::return_freed_memory)
}
