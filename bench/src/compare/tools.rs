//! Installing the third-party contenders and load tools with apt-get.

use anyhow::{bail, Context};
use std::process::Command;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(program).is_file())
}

/// Make sure each (program, apt package) is installed; installs the missing
/// ones with `apt-get install -y` (running `apt-get update` first if needed).
pub fn ensure(needed: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(prog, _)| !on_path(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let mut ok = install()
        .context("running apt-get (are you root on a Debian/Ubuntu machine?)")?
        .success();
    if !ok {
        let _ = Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        ok = install()?.success();
    }
    if !ok {
        bail!(
            "apt-get install {} failed; install them by hand",
            missing.join(" ")
        );
    }
    // The packages may start system services; the benchmark runs its own
    // instances on their own ports, so those are left alone.
    Ok(())
}
