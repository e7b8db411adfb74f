//! The `longtail` command: a thin clap front ([`cli`]) over the library's stages.

mod cli;

use clap::Parser;
use cli::{Cli, Output};
use longtail::Globals;
use std::process::ExitCode;

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("longtail={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    longtail::progress::set_quiet(quiet);
}

/// Mesa's Vulkan "device select" layer asks for a Wayland display while the GPU adapters are
/// listed, and libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set` on every
/// headless machine: harmless, but it reads like a failure. longtail picks its adapter itself
/// (`--device`, `CUBECL_WGPU_DEFAULT_DEVICE`), so the layer is turned off unless the user asked
/// it for a device (`MESA_VK_DEVICE_SELECT`).
fn quiet_vulkan_device_select() {
    if std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: called first thing in `main`, before any thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Every tensor op on flex allocates its output, often megabytes, and frees it within the
/// step. glibc serves such blocks by `mmap` and returns them on `free`, so each op pays page
/// faults and the kernel's zeroing again (20% of scoring in `docs/benchmarks.md`, "Where the
/// time goes"). Serving blocks up to 64 MiB from the heap and keeping up to 1 GiB of freed
/// heap for reuse made the detector train 1.35x and score 1.5x as fast; peak memory did not
/// grow. A user who tunes malloc (`GLIBC_TUNABLES=glibc.malloc...`) keeps their settings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    if !tuned {
        // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    quiet_vulkan_device_select();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let mut out = Output::new();
    // The device is resolved once, here, and only for subcommands that run a model: `auto`
    // probes the GPU adapters, which costs time and is pointless for `ingest` or `label`.
    let result = if cli.command.uses_device() {
        Globals::new(cli.device, cli.seed)
    } else {
        Ok(Globals::flex(cli.seed))
    }
    .and_then(|globals| cli.command.run(&globals, &mut out))
    .and_then(|()| out.flush());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`longtail classify ... | head -1`): not a failure.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
