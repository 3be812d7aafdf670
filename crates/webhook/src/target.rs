//! Where a webhook may go. The operator's `--webhook-url` is trusted as configured;
//! an upload's `callback_url` must start with one of the `--webhook-allow` prefixes,
//! and its host must resolve only to public addresses (not loopback, private,
//! link-local, multicast, …) unless `--webhook-allow-private`: checked at the upload
//! and again at every delivery, when the connection is made, since DNS may change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::Url;

/// Why a callback URL is refused (the upload gets a 400 saying so).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    /// No `--webhook-allow` prefix is configured.
    #[error("this server takes no per-upload callback_url (no --webhook-allow prefix is set)")]
    NotEnabled,
    /// Not an absolute URL.
    #[error("callback_url is not a URL: {0}")]
    Unparsable(String),
    /// A scheme other than http or https.
    #[error("callback_url must be http or https")]
    Scheme,
    /// A user name or password in the URL.
    #[error("callback_url must not carry credentials")]
    Credentials,
    /// No allowed prefix matches.
    #[error("callback_url does not start with an allowed prefix")]
    NotAllowed,
    /// The host is, or resolves to, an address that is not public.
    #[error("callback_url's host {host} is {ip}, an address callbacks may not reach")]
    Forbidden {
        /// The host as written.
        host: String,
        /// The address refused.
        ip: IpAddr,
    },
    /// The host does not resolve.
    #[error("callback_url's host {0} does not resolve")]
    Unresolvable(String),
}

/// The rules a callback URL is held to.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    /// Allowed prefixes, normalised as URLs (`https://hooks.example.com/`).
    allow: Vec<String>,
    /// Whether private, loopback, link-local and multicast addresses are allowed.
    pub allow_private: bool,
}

/// A prefix that is not an http(s) URL without credentials.
#[derive(Debug, thiserror::Error)]
#[error("webhook-allow prefix {prefix:?}: {reason}")]
pub struct PrefixError {
    /// The prefix as given.
    pub prefix: String,
    /// What is wrong with it.
    pub reason: String,
}

impl CallbackPolicy {
    /// The policy of `prefixes` (each an http or https URL, normalised here so that
    /// the comparison is of like with like).
    pub fn new(prefixes: &[String], allow_private: bool) -> Result<CallbackPolicy, PrefixError> {
        let allow = prefixes
            .iter()
            .map(|p| {
                let url = syntax(p).map_err(|e| PrefixError {
                    prefix: p.clone(),
                    reason: e.to_string(),
                })?;
                Ok(url.to_string())
            })
            .collect::<Result<_, PrefixError>>()?;
        Ok(CallbackPolicy {
            allow,
            allow_private,
        })
    }

    /// Whether per-upload callbacks are taken at all.
    pub fn enabled(&self) -> bool {
        !self.allow.is_empty()
    }

    /// The URL if its text is allowed: http(s), no credentials, under a prefix. The
    /// prefix must end where a path segment, query or fragment does, so that
    /// `https://hooks.example.com` does not admit `https://hooks.example.com.evil.org`.
    pub fn check_syntax(&self, raw: &str) -> Result<Url, CallbackError> {
        if !self.enabled() {
            return Err(CallbackError::NotEnabled);
        }
        let url = syntax(raw)?;
        let text = url.as_str();
        let allowed = self.allow.iter().any(|prefix| {
            text.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#'])
            })
        });
        if !allowed {
            return Err(CallbackError::NotAllowed);
        }
        Ok(url)
    }

    /// [`CallbackPolicy::check_syntax`], then the host's addresses (resolved now).
    pub async fn check(&self, raw: &str) -> Result<Url, CallbackError> {
        let url = self.check_syntax(raw)?;
        if !self.allow_private {
            let host = url.host_str().unwrap_or_default().to_string();
            let port = url.port_or_known_default().unwrap_or(443);
            resolve_public(&host, port).await?;
        }
        Ok(url)
    }
}

fn syntax(raw: &str) -> Result<Url, CallbackError> {
    let url = Url::parse(raw.trim()).map_err(|e| CallbackError::Unparsable(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(CallbackError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(CallbackError::Credentials);
    }
    Ok(url)
}

/// The addresses of `host` (a name or an address literal, IPv6 in brackets or not),
/// all of them public; else the first one that is not.
pub async fn resolve_public(host: &str, port: u16) -> Result<Vec<SocketAddr>, CallbackError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| CallbackError::Unresolvable(host.to_string()))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(CallbackError::Unresolvable(host.to_string()));
    }
    // Every address, not only the first: a client may connect to any of them.
    if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(CallbackError::Forbidden {
            host: host.to_string(),
            ip: bad.ip(),
        });
    }
    Ok(addrs)
}

/// Whether callbacks may not reach `ip`: anything but a globally routed unicast
/// address (loopback, private, link-local, multicast, unspecified, broadcast, shared
/// carrier-grade NAT, documentation and benchmarking ranges, and their IPv6 forms,
/// IPv4-mapped addresses included).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 to v4
        || ip.to_ipv4().is_some() && first == 0 // IPv4-compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(prefixes: &[&str]) -> CallbackPolicy {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        CallbackPolicy::new(&prefixes, false).expect("valid prefixes")
    }

    #[test]
    fn only_urls_under_an_allowed_prefix_pass() {
        let p = policy(&["https://hooks.example.com", "https://api.example.org/cb/"]);
        for ok in [
            "https://hooks.example.com",
            "https://hooks.example.com/x?y=1",
            "https://HOOKS.example.com/x",
            "https://api.example.org/cb/anything",
        ] {
            assert!(p.check_syntax(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            (
                "https://hooks.example.com.evil.org/",
                CallbackError::NotAllowed,
            ),
            (
                "https://hooks.example.community/",
                CallbackError::NotAllowed,
            ),
            ("http://hooks.example.com/", CallbackError::NotAllowed),
            ("https://api.example.org/cbx", CallbackError::NotAllowed),
            (
                "https://hooks.example.com@evil.org/",
                CallbackError::Credentials,
            ),
            (
                "https://me:pw@hooks.example.com/",
                CallbackError::Credentials,
            ),
            ("ftp://hooks.example.com/", CallbackError::Scheme),
            ("file:///etc/passwd", CallbackError::Scheme),
        ] {
            assert_eq!(p.check_syntax(bad).expect_err("refused"), why, "{bad}");
        }
        assert!(matches!(
            p.check_syntax("not a url"),
            Err(CallbackError::Unparsable(_))
        ));
        assert_eq!(
            CallbackPolicy::default().check_syntax("https://hooks.example.com/"),
            Err(CallbackError::NotEnabled)
        );
        assert!(CallbackPolicy::new(&["hooks.example.com".into()], false).is_err());
    }

    #[test]
    fn addresses_callbacks_may_not_reach() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_forbidden(bad.parse().expect("an address")), "{bad}");
        }
        for good in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "8.8.8.8",
        ] {
            assert!(!is_forbidden(good.parse().expect("an address")), "{good}");
        }
    }

    #[tokio::test]
    async fn hosts_are_resolved_and_every_address_checked() {
        let p = policy(&[
            "http://localhost:8080/",
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
        ]);
        for raw in [
            "http://localhost:8080/hook",
            "http://127.0.0.1:9/x",
            "http://[::1]:9/x",
        ] {
            assert!(
                matches!(p.check(raw).await, Err(CallbackError::Forbidden { .. })),
                "{raw}"
            );
        }
        let open = CallbackPolicy::new(&["http://127.0.0.1:9/".into()], true).expect("policy");
        assert!(open.check("http://127.0.0.1:9/x").await.is_ok());
    }
}
