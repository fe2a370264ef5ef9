//! Test certificates made with the `openssl` CLI, once per test binary: a CA, a server
//! certificate it signed (names `vault.test`, `localhost`, 127.0.0.1–3), a client certificate
//! for Vault's cert auth, and an unrelated CA for "wrong CA" tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Paths of the generated PEM files. They live for the whole test process.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (CN `keysync-agent`, clientAuth) signed by the CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the server uses.
    pub other_ca_cert: PathBuf,
    /// A directory holding the other CA and the right CA as separate PEM files
    /// (for `ca_path` / `VAULT_CAPATH`).
    pub ca_dir: PathBuf,
}

/// The name in the server certificate that is not an address (for `tls_server_name`).
pub const SERVER_NAME: &str = "vault.test";

/// Runs the openssl CLI in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (needed for the TLS tests: apt-get install openssl): {e}"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-subj",
            &format!("/CN=keysync test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make_leaf(dir: &Path, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext file");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The certificates, generated on first use.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("keysync-pki-").tempdir().expect("tempdir").keep();
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        make_leaf(
            &dir,
            "server",
            SERVER_NAME,
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVER_NAME},DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3\n"
            ),
        );
        make_leaf(
            &dir,
            "client",
            "keysync-agent",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        let ca_dir = dir.join("ca-dir");
        std::fs::create_dir_all(&ca_dir).expect("ca dir");
        std::fs::copy(dir.join("other-ca.pem"), ca_dir.join("00-other.pem")).expect("copy");
        std::fs::copy(dir.join("ca.pem"), ca_dir.join("10-ours.pem")).expect("copy");
        std::fs::write(ca_dir.join("README"), "not a certificate: ignored\n").expect("write");
        Pki {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca_cert: dir.join("other-ca.pem"),
            ca_dir,
            dir,
        }
    })
}
