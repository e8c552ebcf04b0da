//! Certificates made at test time with the openssl command line tool: a CA, a server
//! certificate for localhost / 127.0.0.1 signed by it, client certificates, and a second
//! CA nobody trusts.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestPki {
    dir: tempfile::TempDir,
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (Debian package openssl): {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestPki {
    /// A CA ("ca"), a server certificate ("server") and a CA nobody trusts ("rogue-ca").
    pub fn new() -> TestPki {
        let pki = TestPki {
            dir: tempfile::tempdir().expect("temp dir for certificates"),
        };
        pki.self_signed_ca("ca", "Gateway Test CA");
        pki.self_signed_ca("rogue-ca", "Rogue CA");
        pki.issue(
            "server",
            "localhost",
            "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        );
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn rogue_ca(&self) -> PathBuf {
        self.dir.path().join("rogue-ca.pem")
    }

    pub fn server(&self) -> Pair {
        self.pair("server")
    }

    /// A client certificate with this common name, signed by `issuer` ("ca" or "rogue-ca").
    pub fn client(&self, common_name: &str, issuer: &str) -> Pair {
        let name = format!("client-{common_name}-{issuer}");
        if !self.dir.path().join(format!("{name}.pem")).exists() {
            self.issue(&name, common_name, issuer, "extendedKeyUsage=clientAuth");
        }
        self.pair(&name)
    }

    fn pair(&self, name: &str) -> Pair {
        Pair {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        }
    }

    fn self_signed_ca(&self, name: &str, common_name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={common_name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    fn issue(&self, name: &str, common_name: &str, issuer: &str, extensions: &str) {
        let dir = self.dir.path();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={common_name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), format!("{extensions}\n"))
            .expect("write the extension file");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{issuer}.pem"),
                "-CAkey",
                &format!("{issuer}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
