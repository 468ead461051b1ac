//! Build script of the `sluice` binary: embeds the git revision and the compiler version,
//! which `sluice_build_info` reports.

use std::process::Command;

fn main() {
    let revision = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SLUICE_GIT_REVISION={revision}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.89.0 (29483883e 2025-08-04)" → "1.89.0".
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SLUICE_RUSTC_VERSION={version}");
    // Build again when the checked-out commit changes (HEAD moves, or the branch it names).
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        // The branch's loose ref lives under `refs/heads` (a directory, which cargo scans as a
        // whole, so a ref created there later is seen too); `git gc` may move it into
        // `packed-refs`. A path that does not exist is never named: cargo would take it for
        // changed on every build, and rebuild the binary each time.
        for watched in ["refs/heads", "packed-refs"] {
            let path = std::path::Path::new(&common).join(watched);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// The trimmed output of a git command, if it succeeded.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}
