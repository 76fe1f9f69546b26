//! `NATS_URL`: one server or the members of a cluster, comma-separated, and the
//! connection every subcommand makes with it.
//!
//! Credentials go in the URLs (`nats://user:password@host`, or a token as
//! `nats://token@host`). async-nats reads none from a URL (nats-io/nats.rs#1623), so
//! they are taken out here and given to the client as options: they then apply to
//! every server, discovered ones included, and no server address the client holds
//! (and may log) carries them.

use std::fmt;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// The servers of a `NATS_URL`, and the credentials they carried.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// Without credentials, in the order given (the client shuffles them per attempt).
    servers: Vec<ServerAddr>,
    auth: Auth,
}

/// No `Debug`: it holds secrets.
#[derive(Clone, PartialEq, Eq)]
enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
}

impl NatsUrl {
    /// Parse `nats://a:4222,nats://b:4222` (schemes `nats`, `tls`, `ws`, `wss`; a URL
    /// without a scheme is `nats://`). Servers that carry credentials must all carry
    /// the same ones: a connection has one identity, whichever server it reaches.
    pub fn parse(text: &str) -> Result<NatsUrl, Error> {
        let mut servers = Vec::new();
        let mut auth = Auth::None;
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                continue;
            }
            let addr: ServerAddr = part.parse().map_err(|e| {
                // The io error names the problem, never the URL (it may hold a password).
                Error::NatsUrl(format!("server {} of the list: {e}", i + 1))
            })?;
            let this = match (addr.username(), addr.password()) {
                (None, _) => Auth::None,
                (Some(user), Some(password)) => Auth::UserPassword(decode(user), decode(password)),
                (Some(token), None) => Auth::Token(decode(token)),
            };
            if this != Auth::None {
                if auth != Auth::None && auth != this {
                    return Err(Error::NatsUrl(
                        "the servers of the list carry different credentials".to_string(),
                    ));
                }
                auth = this;
            }
            servers.push(strip_credentials(addr)?);
        }
        if servers.is_empty() {
            return Err(Error::NatsUrl("no server given".to_string()));
        }
        Ok(NatsUrl { servers, auth })
    }

    /// The servers, without credentials.
    pub fn servers(&self) -> &[ServerAddr] {
        &self.servers
    }

    /// Client options carrying the credentials, if the URLs had any.
    pub fn options(&self) -> ConnectOptions {
        match &self.auth {
            Auth::None => ConnectOptions::new(),
            Auth::UserPassword(user, password) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Auth::Token(token) => ConnectOptions::with_token(token.clone()),
        }
    }
}

/// The servers, comma-separated, credentials left out: fit for logs.
impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.servers.iter().map(ServerAddr::as_url_str).collect();
        f.write_str(&list.join(","))?;
        if self.auth != Auth::None {
            f.write_str(" (with credentials)")?;
        }
        Ok(())
    }
}

/// Never the credentials, even in `{:?}`.
impl fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NatsUrl({self})")
    }
}

/// Userinfo in a URL is percent-encoded (`p%40ss` for `p@ss`).
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn strip_credentials(addr: ServerAddr) -> Result<ServerAddr, Error> {
    if addr.username().is_none() && addr.password().is_none() {
        return Ok(addr);
    }
    let mut url = addr.into_inner();
    // Both only fail on URLs that cannot have credentials, which these had.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    ServerAddr::from_url(url).map_err(|e| Error::NatsUrl(format!("server address: {e}")))
}

/// Connect to any server of `url` once; the client then reconnects on its own, trying
/// every server of the list (and those the cluster announces) in turn, for ever.
pub async fn try_connect(url: &NatsUrl, name: &str) -> Result<async_nats::Client, Error> {
    url.options()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .request_timeout(Some(Duration::from_secs(10)))
        .event_callback(|event| async move { log_connection_event(&event) })
        .connect(url.servers())
        .await
        .map_err(|e| Error::Connect(e.to_string()))
}

/// What the client tells of its connection, in the service's log: a disconnect, a
/// slow-consumer drop or a server error is exactly what explains a stage gone quiet.
fn log_connection_event(event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!("nats connected"),
        async_nats::Event::Draining | async_nats::Event::Closed => {
            tracing::debug!(event = %event, "nats connection")
        }
        _ => tracing::warn!(event = %event, "nats connection"),
    }
}

/// Connect to NATS, retrying until a server of `url` answers or shutdown is asked for.
/// A `url` that does not parse is an error at once.
pub async fn connect(
    url: &str,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<async_nats::Client, Error> {
    let url = NatsUrl::parse(url)?;
    let mut delay = Duration::from_millis(200);
    loop {
        match try_connect(&url, name).await {
            Ok(client) => {
                tracing::info!(servers = %url, "connected to nats");
                return Ok(client);
            }
            Err(e) => {
                tracing::warn!(error = %e, servers = %url, retry_in_ms = delay.as_millis() as u64, "nats not reachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &NatsUrl) -> Vec<(String, u16)> {
        url.servers()
            .iter()
            .map(|s| (s.host().to_string(), s.port()))
            .collect()
    }

    #[test]
    fn one_server_or_a_comma_separated_list() {
        let one = NatsUrl::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(hosts(&one), [("127.0.0.1".to_string(), 4222)]);
        let three = NatsUrl::parse("nats://a:4222, nats://b:4223,tls://c:4224,").unwrap();
        assert_eq!(
            hosts(&three),
            [
                ("a".to_string(), 4222),
                ("b".to_string(), 4223),
                ("c".to_string(), 4224)
            ]
        );
        assert!(three.servers()[2].tls_required());
        assert_eq!(
            three.to_string(),
            "nats://a:4222,nats://b:4223,tls://c:4224"
        );
        // No scheme, no port: nats:// and 4222, as the client has it.
        assert_eq!(
            hosts(&NatsUrl::parse("a").unwrap()),
            [("a".to_string(), 4222)]
        );
    }

    #[test]
    fn credentials_leave_the_urls_for_the_options() {
        let url = NatsUrl::parse("nats://alice:p%40ss@a:4222,nats://b:4222").unwrap();
        // No Debug for Auth (it holds secrets): compare, do not print.
        assert!(url.auth == Auth::UserPassword("alice".to_string(), "p@ss".to_string()));
        for s in url.servers() {
            assert_eq!((s.username(), s.password()), (None, None));
        }
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(
                !shown.contains("alice") && !shown.contains("p%40ss"),
                "{shown}"
            );
            assert!(shown.contains("(with credentials)"), "{shown}");
        }
        let token = NatsUrl::parse("tls://s3cr3t@a:4222").unwrap();
        assert!(token.auth == Auth::Token("s3cr3t".to_string()));
        assert!(!token.to_string().contains("s3cr3t"));
        assert!(token.servers()[0].tls_required());
    }

    #[test]
    fn bad_lists_are_refused_without_echoing_secrets() {
        let err = NatsUrl::parse("nats://a:b@x:4222,nats://c:d@y:4222")
            .unwrap_err()
            .to_string();
        assert!(err.contains("different credentials"), "{err}");
        assert!(!err.contains(":b@") && !err.contains("d@y"), "{err}");
        let err = NatsUrl::parse("nats://u:secret@x:4222,http://y:80")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server 2"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(NatsUrl::parse(" , ").is_err());
        assert!(!Error::NatsUrl(String::new()).is_retryable());
    }
}
