//! A credential's entry in the token cache ([`crate::cache`]): what is
//! stored (the token, its headers, Inbenta's `apis`, when it was obtained and
//! for how long) and under which key.
//!
//! The key is a SHA-256 of the credential's identity — its type, token URL
//! (or Inbenta auth URL), client id (or API key), audience, scope,
//! resource, and for a token exchange the subject (its `iss` and `sub`, or
//! the whole subject token when it is not a JWT); Inbenta's flow and origin
//! — so replicas and restarts with the same credential share it whatever
//! the credential's name, and a credential never adopts a token obtained
//! for another resource, grant or subject; the client id, API key and
//! subject token are only ever hashed. Static credentials are not cached
//! (their token is the file's).
//!
//! The engine calls it twice per token request: [`TokenStore::claim`]
//! before (adopt a stored token that is not due for renewal
//! ([`super::timing::due`]) and is not the one it holds or saw rejected;
//! else, with Redis, take the fleet's renewal lock or wait for the replica
//! holding it), and [`TokenStore::settle`] after (store the new token until
//! its expiry, compare-and-set on Redis; release the lock).
//!
//! A stored token's age is counted on the credential's wall clock
//! ([`WallClock`]) from when its request was sent. An entry stored more
//! than [`MAX_CLOCK_AHEAD`] ahead of that clock is never adopted: a clock
//! that was years ahead (a box started before NTP set it) would otherwise
//! make a token that ended long ago look just obtained once it is right.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::assertion::jwt_claims;
use super::provider::{Token, api_url};
use super::settings::{CredentialConfig, CredentialKind, Grant, InbentaKey, OAuth2Config};
use super::suspend::WallClock;
use super::timing;
use crate::cache::{Lock, Seen, TokenCache};
use crate::secret::{EnvSource, Secret};

/// A token as stored. Its text exists only inside the sealed value.
#[derive(Serialize, Deserialize)]
struct Entry {
    value: String,
    headers: Vec<(String, String)>,
    apis: Option<HashMap<String, String>>,
    /// When its request was sent, Unix milliseconds.
    obtained_ms: u64,
    lifetime_ms: u64,
}

/// A token read from the cache.
#[derive(Debug)]
pub struct Stored {
    /// The token, with its whole lifetime.
    pub token: Token,
    /// How long ago its request was sent.
    pub age: Duration,
}

/// How far ahead of this clock a stored token's request time may lie and
/// still be counted as just obtained: replicas' clocks drift by that much,
/// a clock that was wrong (before NTP set it) by far more.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(5);

/// How often a replica waiting on another's renewal reads the entry again.
pub const POLL: Duration = Duration::from_millis(100);

/// What to do before a token request ([`TokenStore::claim`]).
#[derive(Debug)]
pub enum Claim {
    /// Use this stored token; no request.
    Adopt(Stored),
    /// Request one, then hand the ticket to [`TokenStore::settle`].
    Fetch(Ticket),
}

/// Leave to make a token request: what the entry held, and the lock taken.
#[derive(Debug)]
pub struct Ticket {
    seen: Seen,
    lock: Lock,
}

/// One credential's entry in the cache.
pub struct TokenStore {
    cache: Arc<TokenCache>,
    id: String,
    refresh_before: Option<Duration>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore").field("id", &self.id).finish()
    }
}

impl TokenStore {
    /// The entry of `config` (its identity read through `env`); `None` for
    /// a static credential or an identity that does not resolve (the token
    /// request then fails and says why).
    pub fn new(
        cache: &Arc<TokenCache>,
        config: &CredentialConfig,
        env: &dyn EnvSource,
    ) -> Option<TokenStore> {
        let mut identity: Vec<String> = vec!["sidekey-token-v1".into()];
        match &config.kind {
            CredentialKind::Static(_) => return None,
            CredentialKind::OAuth2(oauth2) => {
                identity.extend([
                    "oauth2".into(),
                    oauth2.token_url.to_string(),
                    oauth2.client_id.resolve(env).ok()?.expose().into(),
                    oauth2.audience.clone().unwrap_or_default(),
                    oauth2.scope.clone().unwrap_or_default(),
                ]);
                // Only when set, tagged: a client credentials grant without
                // `resource` keeps the key earlier versions share it under.
                let resource = oauth2.resource.as_ref().map(|r| format!("resource\0{r}"));
                identity.extend(resource);
                identity.extend(subject(oauth2, env)?);
            }
            CredentialKind::Inbenta(inbenta) => identity.extend([
                "inbenta".into(),
                inbenta.auth_url.to_string(),
                inbenta.api_key.resolve(env).ok()?.expose().into(),
                match inbenta.key {
                    InbentaKey::Secret(_) => "secret".into(),
                    InbentaKey::DomainKey(_) => "domain_key".into(),
                },
                (inbenta.origin.as_ref())
                    .map_or("", |origin| origin.to_str().unwrap_or(""))
                    .into(),
            ]),
        }
        let hash = digest(&SHA256, identity.join("\0").as_bytes());
        let id = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(TokenStore {
            cache: Arc::clone(cache),
            id,
            refresh_before: config.refresh_before,
        })
    }

    /// Before a token request: a stored token to adopt (one not due for
    /// renewal that is not `held`, the engine's own or the rejected one), or
    /// a ticket to fetch one. With Redis, the fetch is this replica's only if
    /// it takes the renewal lock (for `lock_for`, the longest a fetch may
    /// take); while another replica holds it, the entry is read again every
    /// [`POLL`] until a token comes or `wait` ends — then this replica
    /// fetches for itself (a holder that died must not cost the token
    /// it still serves). A stored token's age is counted on `wall`.
    pub async fn claim(
        &self,
        held: Option<&Secret>,
        lock_for: Duration,
        wait: Duration,
        wall: &WallClock,
    ) -> Claim {
        let deadline = Instant::now() + wait.min(lock_for);
        loop {
            let (found, seen) = self.cache.get(&self.id).await;
            if let Some(stored) =
                found.and_then(|found| self.adoptable(&found.plain, held, wall.now()))
            {
                return Claim::Adopt(stored);
            }
            let lock = match self.cache.lock(&self.id, lock_for).await {
                Lock::Busy if Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Lock::Busy => Lock::Alone,
                lock => lock,
            };
            if let Lock::Taken(_) = lock {
                // Another replica may have published between the read and the lock.
                let (found, seen) = self.cache.get(&self.id).await;
                if let Some(stored) =
                    found.and_then(|found| self.adoptable(&found.plain, held, wall.now()))
                {
                    self.cache.unlock(&self.id, &lock).await;
                    return Claim::Adopt(stored);
                }
                return Claim::Fetch(Ticket { seen, lock });
            }
            return Claim::Fetch(Ticket { seen, lock });
        }
    }

    /// After the token request `ticket` allowed: store the `token` obtained
    /// (whose request was sent `age` ago on `wall`) until its expiry — on
    /// Redis only if the entry is still what the claim saw — and release
    /// the lock. Tokens without expiry are not stored.
    pub async fn settle(
        &self,
        ticket: Ticket,
        token: Option<&Token>,
        age: Duration,
        wall: &WallClock,
    ) {
        if let Some((plain, expires)) = token.and_then(|token| entry(token, age, wall.now())) {
            let shared = (self.cache)
                .publish(&self.id, &plain, expires, &ticket.seen)
                .await;
            if shared == Some(false) {
                tracing::debug!("token cache: another replica replaced the entry first");
            }
        }
        self.cache.unlock(&self.id, &ticket.lock).await;
    }

    /// The token `plain` holds, if it is worth adopting instead of `held`
    /// at wall-clock time `now`.
    fn adoptable(&self, plain: &[u8], held: Option<&Secret>, now: SystemTime) -> Option<Stored> {
        let entry: Entry = serde_json::from_slice(plain).ok()?;
        let obtained = UNIX_EPOCH.checked_add(Duration::from_millis(entry.obtained_ms))?;
        // A clock a little behind the one that stored it (replicas drift)
        // counts the token as new. Far behind, the token's age is unknown:
        // one of the two clocks was wrong (a box started before NTP set
        // it), and the token may have ended long ago.
        let age = match now.duration_since(obtained) {
            Ok(age) => age,
            Err(ahead) if ahead.duration() <= MAX_CLOCK_AHEAD => Duration::ZERO,
            Err(ahead) => {
                tracing::warn!(
                    "a cached token is ignored: it was stored at {} by a clock {} s ahead \
                     of this one, so its age is unknown; one of the two clocks looks wrong",
                    httpdate::fmt_http_date(obtained),
                    ahead.duration().as_secs()
                );
                return None;
            }
        };
        let lifetime = Duration::from_millis(entry.lifetime_ms);
        if timing::due(lifetime, age, self.refresh_before)
            || held.is_some_and(|held| held.expose() == entry.value)
        {
            return None;
        }
        let mut headers = Vec::with_capacity(entry.headers.len());
        for (name, value) in &entry.headers {
            let mut value = HeaderValue::from_str(value).ok()?;
            value.set_sensitive(true);
            headers.push((HeaderName::from_str(name).ok()?, value));
        }
        let apis = entry.apis.map(|apis| {
            let parsed = apis.into_iter();
            let parsed = parsed.filter_map(|(name, url)| Some((name, api_url(&url)?)));
            Arc::new(parsed.collect())
        });
        let token = Token {
            value: Secret::new(entry.value),
            lifetime: Some(lifetime),
            headers,
            apis,
        };
        Some(Stored { token, age })
    }
}

/// `token` (requested `age` before wall-clock time `now`) as stored, and
/// when it expires; `None` for a token without expiry or with a header that
/// is not text.
fn entry(token: &Token, age: Duration, now: SystemTime) -> Option<(Vec<u8>, SystemTime)> {
    let lifetime = token.lifetime?;
    let obtained = now.checked_sub(age).unwrap_or(UNIX_EPOCH);
    let headers = token.headers.iter();
    let headers = headers
        .map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())));
    let headers = headers.collect::<Option<Vec<_>>>()?;
    let apis = token.apis.as_ref().map(|apis| {
        let apis = apis.iter();
        apis.map(|(name, url)| (name.clone(), url.to_string()))
            .collect()
    });
    let entry = Entry {
        value: token.value.expose().to_owned(),
        headers,
        apis,
        obtained_ms: millis(obtained),
        lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
    };
    let plain = serde_json::to_vec(&entry).ok()?;
    Some((plain, obtained.checked_add(lifetime).unwrap_or(obtained)))
}

fn millis(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Whose token an `oauth2` credential obtains: for a token exchange, the
/// subject token's type and its `iss` and `sub` claims (every rotation of
/// one service account's token stands for the same subject), or the whole
/// subject token when it is not a JWT that names both; nothing more for the
/// client credentials grant (the client's own token). `None` when the
/// subject token cannot be read now.
fn subject(oauth2: &OAuth2Config, env: &dyn EnvSource) -> Option<Option<String>> {
    let source = match (oauth2.grant, &oauth2.subject_token) {
        (Grant::TokenExchange, Some(source)) => source,
        (Grant::ClientCredentials, _) | (Grant::TokenExchange, None) => return Some(None),
    };
    let token = source.resolve(env).ok()?;
    let kind = oauth2.subject_token_type.as_deref().unwrap_or_default();
    let claims = jwt_claims(token.expose());
    let claim = |name: &str| {
        let value = claims.as_ref()?.get(name)?.as_str()?;
        Some(value.to_owned())
    };
    Some(Some(match (claim("iss"), claim("sub")) {
        (Some(iss), Some(sub)) => format!("exchange\0{kind}\0jwt\0{iss}\0{sub}"),
        _ => format!("exchange\0{kind}\0token\0{}", token.expose()),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::parse;
    use crate::secret::MapEnv;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    /// The entry ids of the credentials `text` defines, with `CLIENT_ID` = `client_id`.
    fn ids(text: &str, client_id: &str) -> Vec<Option<String>> {
        let env = MapEnv::from([("CLIENT_ID", client_id), ("S", "secret"), ("K", KEY)]);
        let text = format!("{text}\n[cache]\nencryption_key = {{ env = \"K\" }}\n");
        let config = parse(
            &text,
            Path::new("/etc/sidekey/s.toml"),
            Arc::new(env.clone()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cache = config.cache.as_ref().expect("[cache]");
        let cache = Arc::new(TokenCache::open(cache, &env, None).expect("cache"));
        let stores = config.credentials.values();
        let stores = stores.map(|credential| TokenStore::new(&cache, credential, &env));
        stores.map(|store| store.map(|store| store.id)).collect()
    }

    const OAUTH: &str = "type = \"oauth2\"\ntoken_url = \"https://auth.example/t\"\n\
                         client_id = { env = \"CLIENT_ID\" }\nclient_secret = { env = \"S\" }\n";

    #[test]
    fn the_id_is_the_credentials_identity_hashed_whatever_its_name() {
        let two = format!("[credentials.a]\n{OAUTH}\n[credentials.b]\n{OAUTH}");
        let same = ids(&two, "client-1");
        assert_eq!(same[0], same[1], "the name is not part of the identity");
        let id = same[0].clone().expect("an oauth2 credential is cached");
        assert_eq!(id.len(), 64);
        assert!(!id.contains("client-1"));
        let other_client = ids(&format!("[credentials.a]\n{OAUTH}"), "client-2");
        assert_ne!(other_client[0], same[0]);
        let scoped = format!("[credentials.a]\n{OAUTH}scope = \"read\"\n");
        assert_ne!(ids(&scoped, "client-1")[0], same[0]);
        let resource = format!("[credentials.a]\n{OAUTH}resource = \"https://b\"\n");
        assert_ne!(ids(&resource, "client-1")[0], same[0]);
        // Replicas of the previous version share this entry during a rollout.
        let before = "sidekey-token-v1\0oauth2\0https://auth.example/t\0client-1\0\0";
        let hash = digest(&SHA256, before.as_bytes());
        let before: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id, before, "a client credentials key is what it was");
        let fixed = "[credentials.s]\ntype = \"static\"\ntoken = { env = \"S\" }\n";
        assert_eq!(
            ids(fixed, "client-1"),
            vec![None],
            "static tokens are not cached"
        );
    }
}
