//! TLS for the client port (`server.tls`), through Pingora's rustls
//! listener, HTTP/1.1 and HTTP/2 over ALPN.
//!
//! The certificate is served by a resolver that holds the current key in an
//! `ArcSwap`: `SIGHUP` re-reads the files and swaps the new key in, so the
//! next handshake uses it while connections already open keep theirs and
//! are never dropped. Files that fail to load leave the old certificate in
//! place (and say why in the log).

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// The certificate and key files, and the key being served.
pub struct CertStore {
    cert: String,
    key: String,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("cert", &self.cert).field("key", &"<private>").finish()
    }
}

impl CertStore {
    /// Loads the pair now, so a bad file stops start-up.
    pub fn load(cert: &str, key: &str) -> Result<Arc<CertStore>, String> {
        let current = ArcSwap::from_pointee(read(cert, key)?);
        Ok(Arc::new(CertStore { cert: cert.to_string(), key: key.to_string(), current }))
    }

    /// Re-reads the files; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), String> {
        self.current.store(Arc::new(read(&self.cert, &self.key)?));
        Ok(())
    }
}

fn read(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    pingora::tls::install_default_crypto_provider();
    let (certs, private) = match pingora::tls::load_certs_and_key_files(cert, key) {
        Ok(Some(pair)) => pair,
        Ok(None) => return Err(format!("{cert} / {key}: no certificate, or no private key (PKCS#1, PKCS#8 or SEC1 PEM)")),
        Err(e) => return Err(format!("{cert} / {key}: {e}")),
    };
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let signing = provider.key_provider.load_private_key(private).map_err(|e| format!("{key}: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| format!("{cert} does not belong to {key}: {e}"))?;
    Ok(ck)
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
