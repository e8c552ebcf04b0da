//! Where the tests find the programs that are not simply on every user's `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::broker::workspace_root;

/// `$GATEWAY_TEST_PYTHON` if set, else the virtual environment
/// `scripts/install-test-tools.sh` makes from `py/requirements.txt`
/// (`<workspace>/target/test-venv`), else `python3` on the `PATH` for a machine whose
/// own Python has those packages.
pub fn python() -> OsString {
    if let Some(python) = std::env::var_os("GATEWAY_TEST_PYTHON") {
        return python;
    }
    let venv = workspace_root().join("target/test-venv/bin/python");
    if venv.is_file() {
        return venv.into_os_string();
    }
    "python3".into()
}

/// A daemon of a Debian package: the package puts it in `/usr/sbin`, which is on root's
/// `PATH` but not on other users'.
pub fn sbin(name: &str) -> PathBuf {
    PathBuf::from("/usr/sbin").join(name)
}
