//! A small filesystem that a test can fill up: a tmpfs mounted for one test (mounting needs
//! root; where it is not allowed, the test says so and checks nothing).

use std::path::Path;

/// A tmpfs mounted for one test; unmounted when dropped.
pub struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a tmpfs of `mib` MiB, or prints why not and returns `None`.
    pub fn tmpfs(mib: u64, test: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}M"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Mount { dir }),
            other => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs ({other:?}); \
                     run the integration tests as root to check a full disk"
                );
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks) the filesystem.
    pub fn resize(&self, mib: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}M")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount to {mib} MiB failed");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
