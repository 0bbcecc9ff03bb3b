//! OPTIONS discovery: what an endpoint offers, whichever protocol it speaks (tus headers, or
//! the IETF draft's `Upload-Limit` and `Accept-Patch`).

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::response::{ServerCaps, classify, header, network};
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::tus;
use reqwest::{Method, Url};

/// OPTIONS: what the server supports.
pub async fn options(http: &reqwest::Client, endpoint: &Url) -> Result<ServerCaps, AttemptError> {
    let resp = http
        .request(Method::OPTIONS, endpoint.clone())
        .send()
        .await
        .map_err(|e| network("OPTIONS", e))?;
    if matches!(resp.status().as_u16(), 405 | 501) {
        // OPTIONS not implemented: not a tus server, or one that answers OPTIONS poorly. The
        // creation will tell.
        return Err(AttemptError::Fatal(ClientError::new(
            ErrorKind::Refused,
            format!("OPTIONS: {}", resp.status()),
        )));
    }
    if !resp.status().is_success() {
        return Err(classify(resp, "OPTIONS").await);
    }
    let extensions = header(&resp, tus::TUS_EXTENSION)
        .unwrap_or("")
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>();
    let listed = header(&resp, tus::TUS_CHECKSUM_ALGORITHM)
        .filter(|_| extensions.iter().any(|e| e == "checksum"));
    let checksum = listed.and_then(ChecksumAlgorithm::best_of);
    let algorithms = listed
        .map(|l| {
            l.split(',')
                .filter_map(|n| ChecksumAlgorithm::from_name(n.trim()))
                .collect()
        })
        .unwrap_or_default();
    let max_size = header(&resp, tus::TUS_MAX_SIZE)
        .and_then(|v| tus::parse_number(tus::TUS_MAX_SIZE, v).ok())
        .or_else(|| crate::ietf::max_size(resp.headers()));
    Ok(ServerCaps {
        extensions,
        checksum,
        algorithms,
        max_size,
        answered: true,
        tus: resp.headers().contains_key(tus::TUS_VERSION_HEADER)
            || resp.headers().contains_key(tus::TUS_RESUMABLE),
        ietf: crate::ietf::speaks_draft(resp.headers()),
        chunks: resp
            .headers()
            .contains_key(ferry_proto::range::CHUNK_SESSIONS_HEADER),
    })
}
