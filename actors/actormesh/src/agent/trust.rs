//! The agent's part in a CA rotation: it reports the bundle it trusts and the CA of its
//! certificate with each heartbeat, takes the bundle the master answers with (on its
//! endpoint and on disk), and renews at once when told the signer changed.

use std::path::Path;

use actormesh_transport::pki::files;
use actormesh_transport::trust;
use tracing::info;

use super::{save_credentials, AgentError, CREDS};
use crate::Node;

/// The digest of the bundle the node trusts, and the fingerprint of the CA of that bundle
/// that issued its certificate ("" if none did).
pub(super) fn report(node: &Node) -> (String, String) {
    let bundle = node.endpoint().trust();
    let chain = node.endpoint().certificate_chain();
    let cert_ca = chain
        .first()
        .and_then(|leaf| trust::issuer_in(leaf, &bundle))
        .unwrap_or_default();
    (trust::digest(&bundle), cert_ca)
}

/// Trusts `bundle_pem` from now on: on the node's endpoint (links to peers whose
/// certificates chain to none of its CAs close) and in the saved credentials, so that a
/// restart trusts it too.
pub(super) fn apply_bundle(node: &Node, dir: &Path, bundle_pem: &str) -> Result<(), AgentError> {
    let bundle = trust::parse_bundle(bundle_pem).map_err(AgentError::BadBundle)?;
    let set = dir.join(CREDS);
    let from = if set.exists() { set } else { dir.to_path_buf() };
    let read = |name: &str| {
        let path = from.join(name);
        std::fs::read_to_string(&path).map_err(AgentError::storage("read", &path))
    };
    let (key, cert) = (read(files::KEY)?, read(files::CERT)?);
    save_credentials(dir, &key, &cert, &trust::bundle_pem(&bundle))?;
    let closed = node.endpoint().replace_trust(&bundle)?;
    info!(
        cas = bundle.len(),
        digest = %trust::digest(&bundle),
        closed_links = closed,
        "trust bundle updated by the master"
    );
    Ok(())
}
