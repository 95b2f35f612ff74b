//! Throw-away TLS certificates for tests, made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// A CA, a server certificate for `127.0.0.1` and a client certificate (CN `root`), as PEM
/// files in one directory.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Where the files are (and the CA's key).
    pub dir: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate (SAN `IP:127.0.0.1`).
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (Debian package `openssl`)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl TlsFiles {
    /// Generates the files in `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        openssl(
            dir,
            &[
                &["req", "-x509"],
                &EC[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=switchboard-test-ca",
                ],
            ]
            .concat(),
        )?;
        let san = "IP:127.0.0.1";
        sign(dir, "server", "127.0.0.1", san, "serverAuth,clientAuth")?;
        sign(dir, "client", "root", san, "clientAuth")?;
        Ok(Self {
            dir: dir.to_owned(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        })
    }

    /// Issues a server certificate for the DNS name `name` from the same CA: its certificate
    /// and key files.
    pub fn issue(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        sign(&self.dir, name, name, &format!("DNS:{name}"), "serverAuth")
    }
}

/// A new P-256 key.
const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Makes `<file>.pem` and `<file>.key` in `dir`: a certificate for `cn` with this
/// subjectAltName and extended key usage, signed by the CA there.
fn sign(dir: &Path, file: &str, cn: &str, san: &str, usage: &str) -> Result<(PathBuf, PathBuf)> {
    let ext = format!("{file}.ext");
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={san}\nextendedKeyUsage={usage}\n"),
    )?;
    let (key, csr, pem) = (
        format!("{file}.key"),
        format!("{file}.csr"),
        format!("{file}.pem"),
    );
    openssl(
        dir,
        &[
            &["req"],
            &EC[..],
            &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    )?;
    Ok((dir.join(pem), dir.join(key)))
}
