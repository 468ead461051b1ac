//! Private files written whole: a temporary file beside the target, with a random name,
//! created new and readable by its owner only, filled and synced, for the caller to put in
//! place (rename over the target, or link it so that an existing target wins).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::{OsRng, RngCore};

/// A name for a private temporary file beside `path`, random so that processes sharing the
/// directory (replicas on one volume, often all PID 1) never pick the same one.
pub fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{:016x}.tmp", OsRng.next_u64()));
    path.with_file_name(name)
}

/// Writes `contents` to a new private temporary file beside `path` ([`temporary_beside`]):
/// created new (never an existing file nor through a planted symbolic link), owner-only from
/// the start, synced. Returns its name; on error nothing is left behind.
pub fn write_temporary(path: &Path, contents: &[u8]) -> std::io::Result<PathBuf> {
    let temporary = temporary_beside(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    drop(file);
    match written {
        Ok(()) => Ok(temporary),
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_random_and_beside_the_file() {
        let path = Path::new("/volume/data/jwt-secret");
        let (a, b) = (temporary_beside(path), temporary_beside(path));
        assert_ne!(a, b);
        assert_eq!(a.parent(), path.parent());
        let name = a.file_name().unwrap().to_str().unwrap();
        let random = name
            .strip_prefix("jwt-secret.")
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .unwrap_or_else(|| panic!("{name}"));
        assert!(
            random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }

    #[test]
    fn temporaries_are_owner_only_and_hold_the_contents() {
        let dir = std::env::temp_dir().join(format!("sluice-private-{}", OsRng.next_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let temporary = write_temporary(&dir.join("target"), b"contents\n").unwrap();
        assert_eq!(std::fs::read(&temporary).unwrap(), b"contents\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&temporary).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
