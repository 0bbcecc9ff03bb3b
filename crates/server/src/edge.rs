//! Checks every request passes before routing: one well-formed `Host`, a `Host` this server
//! answers to (the DNS-rebinding guard), and no state change from a page of an origin CORS
//! does not allow (a cross-site request forgery guard).

use crate::config::{Cors, HostPolicy};
use crate::error::ApiError;
use ferry_proto::http::{Site, host_name, is_loopback_host, request_site};
use http::{HeaderMap, Method, Request, StatusCode, header};
use std::net::IpAddr;

/// What the host check needs to know about the server.
#[derive(Debug, Clone, Copy)]
pub struct HostRules<'a> {
    /// The address the listener is bound to.
    pub bound: Option<IpAddr>,
    /// The host of `--public-url`.
    pub public_host: Option<&'a str>,
    /// `--allowed-hosts`.
    pub policy: &'a HostPolicy,
}

/// Whether a server bound as `rules` says may answer a request naming `host` (lowercase, as
/// [`host_name`] returns it). DNS rebinding reaches a server through a name the attacker's DNS
/// points at it, so names that cannot be rebound are always answered: loopback names, the
/// public URL's host and, off loopback, IP literals (what health checks use). A loopback-bound
/// server answers no other name by default. A server bound elsewhere is reached by names it
/// cannot know (a proxy's upstream name such as `ferry:1080`, which nginx sends as `Host` by
/// default), so it answers any unless `--allowed-hosts` lists them. `--allowed-hosts *` lifts
/// the check.
pub fn host_allowed(host: &str, rules: HostRules<'_>) -> bool {
    let on_loopback = rules.bound.is_some_and(|ip| ip.is_loopback());
    let listed = match rules.policy {
        HostPolicy::Any => return true,
        HostPolicy::Only(list) => list.iter().any(|h| h.eq_ignore_ascii_case(host)),
        HostPolicy::Auto => !on_loopback,
    };
    listed
        || is_loopback_host(host)
        || rules.public_host == Some(host)
        || (!on_loopback && host.parse::<IpAddr>().is_ok())
}

/// Refuses a request before routing: 400 for two `Host` fields or a malformed one (RFC 9112
/// §3.2), 421 for a host this server does not answer to, 403 for a state-changing request
/// from a page of an origin CORS does not allow.
pub fn check<B>(req: &Request<B>, rules: HostRules<'_>, cors: &Cors) -> Result<(), ApiError> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_field = hosts.next();
    if hosts.next().is_some() {
        return Err(ApiError::bad_request("a request has one Host header").closing());
    }
    let host_text = match host_field {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|t| host_name(t).is_some())
                .ok_or_else(|| ApiError::bad_request("malformed Host header").closing())?,
        ),
        None => None,
    };
    // An absolute-form target's authority stands in for Host (RFC 9112 §3.2.2): check both.
    for authority in host_text
        .into_iter()
        .chain(req.uri().authority().map(|a| a.as_str()))
    {
        let name = host_name(authority)
            .ok_or_else(|| ApiError::bad_request("malformed request target").closing())?;
        if !host_allowed(&name, rules) {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer to the host {name:?} (it answers to \
                     localhost, 127.0.0.1, [::1], its --public-url and --allowed-hosts): a page \
                     of another site may be trying to reach it (DNS rebinding). To serve this \
                     name, add --allowed-hosts {name}"
                ),
            )
            .closing());
        }
    }
    if is_state_changing(req.method()) && cross_origin_refused(headers, host_text, cors) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-origin request refused: this server does not allow the page's origin \
             (--cors-origins)",
        )
        .closing());
    }
    Ok(())
}

fn is_state_changing(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A browser sends some cross-origin requests without asking first (a form's POST): CORS
/// keeps their answers from the page, not their effects. Refuse those CORS does not allow.
fn cross_origin_refused(headers: &HeaderMap, host: Option<&str>, cors: &Cors) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = text("origin");
    if origin.is_some_and(|o| cors.allow(o).is_some()) {
        return false;
    }
    request_site(text("sec-fetch-site"), origin, host) == Site::Cross
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(
        bound: &str,
        public: Option<&'static str>,
        policy: &'static HostPolicy,
    ) -> HostRules<'static> {
        HostRules {
            bound: Some(bound.parse().unwrap()),
            public_host: public,
            policy,
        }
    }

    #[test]
    fn a_loopback_server_answers_to_loopback_names_and_its_public_host_only() {
        static DEFAULT: HostPolicy = HostPolicy::Auto;
        let r = rules("127.0.0.1", Some("up.example"), &DEFAULT);
        for ok in ["localhost", "127.0.0.1", "::1", "up.example", "x.localhost"] {
            assert!(host_allowed(ok, r), "{ok}");
        }
        for no in ["rebind.example", "192.168.1.2", "up.example.evil"] {
            assert!(!host_allowed(no, r), "{no}");
        }
        assert!(!host_allowed(
            "rebind.example",
            rules("::1", None, &DEFAULT)
        ));
        // Bound to every address or a public one: reached by names it cannot know...
        assert!(host_allowed(
            "rebind.example",
            rules("0.0.0.0", None, &DEFAULT)
        ));
        assert!(host_allowed(
            "files.example",
            rules("192.0.2.1", None, &DEFAULT)
        ));
        // ...a proxy's upstream name among them, whatever the public URL says.
        assert!(host_allowed(
            "ferry",
            rules("0.0.0.0", Some("up.example"), &DEFAULT)
        ));
    }

    #[test]
    fn allowed_hosts_apply_on_every_address_or_lift_the_check() {
        let only = Box::leak(Box::new(HostPolicy::Only(vec!["files.example".into()])));
        for bound in ["127.0.0.1", "0.0.0.0"] {
            assert!(host_allowed("files.example", rules(bound, None, only)));
            assert!(host_allowed("localhost", rules(bound, None, only)));
            assert!(!host_allowed("rebind.example", rules(bound, None, only)));
        }
        assert!(host_allowed("10.1.2.3", rules("0.0.0.0", None, only)));
        assert!(!host_allowed("10.1.2.3", rules("127.0.0.1", None, only)));
        static ANY: HostPolicy = HostPolicy::Any;
        assert!(host_allowed(
            "rebind.example",
            rules("127.0.0.1", None, &ANY)
        ));
    }
}
