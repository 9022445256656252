//! The hosted registry for private crates, beside the mirror: publish, yank, owners,
//! search, downloads and token auth, plus the dependency-confusion guard the mirror asks
//! before serving a name. Index updates are compare-and-swap loops on the store, so
//! concurrent publishes of one crate serialise without a lock.

pub mod publish;
pub mod push;
pub mod tokens;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::Error;
use crate::index::{self, CrateName};
use crate::policy::Clock;
use crate::store::{Key, Store};
use publish::{IndexLine, Limits};
use tokens::{Scope, TokenDb};

pub struct RegistrySettings {
    pub public_url: String,
    /// `auth.read_required`: every private read needs a token.
    pub read_required: bool,
    pub limits: Limits,
    /// `private.reserved` glob patterns (e.g. `acme-*`): never fetched upstream.
    pub reserved: Vec<String>,
    /// Largest publish request body, refused before reading.
    pub max_body: u64,
}

/// Who a request's token belongs to.
#[derive(Debug, Clone)]
pub struct Identity {
    pub token_name: String,
    pub user: String,
    pub scope: Scope,
}

/// Owners and description of a private crate (the index holds only index lines).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CrateMeta {
    name: String,
    owners: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

pub struct Registry {
    store: Arc<dyn Store>,
    clock: Clock,
    s: RegistrySettings,
    reserved: Vec<glob::Pattern>,
    /// Canonical names of all private crates (the guard reads it on every mirror request).
    names: ArcSwap<HashSet<String>>,
    /// The token database, re-read at most once a second so CLI changes apply quickly.
    tokens: Cache<(), Arc<TokenDb>>,
}

/// crates.io's uniqueness rule: `lower(name)` with `-` replaced by `_`.
pub fn canonical(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrySetupError {
    #[error("private.reserved pattern `{0}` is not a valid glob: {1}")]
    Pattern(String, String),
    #[error("cannot list private crates: {0}")]
    Store(#[from] crate::store::StoreError),
}

const CAS_ATTEMPTS: usize = 50;

impl Registry {
    pub async fn new(
        store: Arc<dyn Store>,
        clock: Clock,
        s: RegistrySettings,
    ) -> Result<Arc<Self>, RegistrySetupError> {
        let reserved = s
            .reserved
            .iter()
            .map(|p| {
                glob::Pattern::new(&canonical(p))
                    .map_err(|e| RegistrySetupError::Pattern(p.clone(), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names: HashSet<String> = store
            .list(Key::PRIVATE_NAMES_PREFIX)
            .await?
            .into_iter()
            .filter_map(|k| {
                k.as_str()
                    .strip_prefix(Key::PRIVATE_NAMES_PREFIX)
                    .map(str::to_owned)
            })
            .collect();
        Ok(Arc::new(Self {
            store,
            clock,
            s,
            reserved,
            names: ArcSwap::from_pointee(names),
            tokens: Cache::builder()
                .time_to_live(Duration::from_secs(1))
                .build(),
        }))
    }

    pub fn read_required(&self) -> bool {
        self.s.read_required
    }

    pub fn max_body(&self) -> u64 {
        self.s.max_body
    }

    pub fn login_url(&self) -> String {
        format!("{}/private/me", self.s.public_url)
    }

    /// The dependency-confusion guard: true when `name` is a private crate or matches a
    /// reserved pattern, so the mirror must never ask the upstream for it.
    pub fn blocks_mirror(&self, name: &str) -> bool {
        let c = canonical(name);
        self.names.load().contains(&c) || self.reserved.iter().any(|p| p.matches(&c))
    }

    /// The identity behind a raw token (`Authorization: <token>`, or `Bearer <token>`).
    pub async fn identify(&self, token: Option<&str>) -> Result<Option<Identity>, Error> {
        let Some(raw) = token else { return Ok(None) };
        let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
        let db = self
            .tokens
            .try_get_with((), async {
                tokens::load(self.store.as_ref())
                    .await
                    .map(|(db, _)| Arc::new(db))
                    .map_err(|e| Error::Storage(e.to_string()))
            })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(db.find(token).map(|r| Identity {
            token_name: r.name.clone(),
            user: r.user.clone(),
            scope: r.scope,
        }))
    }

    async fn token_db(&self) -> Result<Arc<TokenDb>, Error> {
        tokens::load(self.store.as_ref())
            .await
            .map(|(db, _)| Arc::new(db))
            .map_err(|e| Error::Storage(e.to_string()))
    }

    /// The private index's config.json. `base` is the public URL, with `/t/TOKEN` when the
    /// client put its token in the path (older cargo), so downloads and API calls keep it.
    pub fn config_json(&self, base: &str) -> Bytes {
        let mut v = serde_json::json!({
            "dl": format!("{base}/private/api/v1/crates"),
            "api": format!("{base}/private"),
        });
        if self.s.read_required {
            v["auth-required"] = true.into();
        }
        Bytes::from(format!("{v}\n"))
    }

    pub async fn index_file(&self, name: &CrateName) -> Result<Bytes, Error> {
        match self.store.get(&Key::private_index(name)).await {
            Ok(Some(o)) => Ok(o.bytes),
            Ok(None) => Err(Error::NotFound(format!("no private crate named `{name}`"))),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }

    pub async fn download(&self, name: &CrateName, version: &str) -> Result<Bytes, Error> {
        let body = self.index_file(name).await?;
        let entry = index::find_version(&body, name.as_str(), version).ok_or_else(|| {
            Error::NotFound(format!("private crate `{name}` has no version {version}"))
        })?;
        match self.store.get(&Key::private_blob(&entry.cksum)).await {
            Ok(Some(o)) => Ok(o.bytes),
            Ok(None) => Err(Error::Storage(format!(
                "the .crate of `{name}` {version} is missing from the store (run `wharf verify`)"
            ))),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }

    fn require_publish(who: Option<&Identity>) -> Result<&Identity, Error> {
        match who {
            None => Err(Error::Forbidden(
                "this action needs a publish token: create one with `wharf token create --name NAME` and run `cargo login --registry wharf`".into(),
            )),
            Some(i) if i.scope != Scope::Publish => Err(Error::Forbidden(format!(
                "token `{}` is read-only; publishing, yanking and owner changes need a publish token",
                i.token_name
            ))),
            Some(i) => Ok(i),
        }
    }

    async fn load_meta(&self, name: &CrateName) -> Result<Option<(CrateMeta, String)>, Error> {
        match self.store.get(&Key::private_meta(name)).await {
            Ok(Some(o)) => serde_json::from_slice(&o.bytes)
                .map(|m| Some((m, o.version)))
                .map_err(|e| Error::Storage(format!("owners record of `{name}` is damaged: {e}"))),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }

    fn require_owner(meta: &CrateMeta, who: &Identity, name: &CrateName) -> Result<(), Error> {
        if meta.owners.contains(&who.user) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "user `{}` is not an owner of `{name}` (owners: {})",
                who.user,
                meta.owners.join(", ")
            )))
        }
    }

    /// Applies `f` to a crate's owners record with a compare-and-swap loop.
    async fn update_meta<T>(
        &self,
        name: &CrateName,
        mut f: impl FnMut(Option<CrateMeta>) -> Result<(CrateMeta, T), Error>,
    ) -> Result<T, Error> {
        let key = Key::private_meta(name);
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.load_meta(name).await?;
            let version = cur.as_ref().map(|(_, v)| v.clone());
            let (new, out) = f(cur.map(|(m, _)| m))?;
            let bytes = Bytes::from(serde_json::to_vec(&new).unwrap_or_default());
            match self.store.replace_if(&key, version.as_deref(), bytes).await {
                Ok(true) => return Ok(out),
                Ok(false) => continue,
                Err(e) => return Err(Error::Storage(e.to_string())),
            }
        }
        Err(Error::Conflict(format!(
            "`{name}` is being changed concurrently; try again"
        )))
    }

    /// Applies `f` to a crate's index file (as lines) with a compare-and-swap loop.
    async fn update_index<T>(
        &self,
        name: &CrateName,
        mut f: impl FnMut(Vec<String>) -> Result<(Vec<String>, T), Error>,
    ) -> Result<T, Error> {
        let key = Key::private_index(name);
        for _ in 0..CAS_ATTEMPTS {
            let (lines, version) = match self.store.get(&key).await {
                Ok(Some(o)) => (
                    String::from_utf8_lossy(&o.bytes)
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    Some(o.version),
                ),
                Ok(None) => (Vec::new(), None),
                Err(e) => return Err(Error::Storage(e.to_string())),
            };
            let (lines, out) = f(lines)?;
            let mut text = lines.join("\n");
            text.push('\n');
            match self
                .store
                .replace_if(&key, version.as_deref(), Bytes::from(text))
                .await
            {
                Ok(true) => return Ok(out),
                Ok(false) => continue,
                Err(e) => return Err(Error::Storage(e.to_string())),
            }
        }
        Err(Error::Conflict(format!(
            "`{name}` is being changed concurrently; try again"
        )))
    }

    /// `cargo publish`: validates everything, stores the .crate, then appends the index line
    /// (visible before the 200, as cargo polls for it).
    pub async fn publish(
        &self,
        who: Option<&Identity>,
        body: Bytes,
    ) -> Result<serde_json::Value, Error> {
        let who = Self::require_publish(who)?;
        let limits = &self.s.limits;
        let (meta, tarball) = publish::parse_body(&body, limits).map_err(publish_error)?;
        let vers = publish::validate_meta(&meta).map_err(publish_error)?;
        let name = CrateName::parse(&meta.name).map_err(|e| Error::BadRequest(e.to_string()))?;
        let (m, v, t, l) = (
            meta.name.clone(),
            meta.vers.clone(),
            tarball.clone(),
            limits.clone(),
        );
        tokio::task::spawn_blocking(move || publish::check_tarball(&t, &m, &v, &l))
            .await
            .map_err(|e| Error::Storage(e.to_string()))?
            .map_err(publish_error)?;
        let cksum = index::sha256_hex(&tarball);

        // One spelling per canonical name, first come first served.
        let canon = canonical(&meta.name);
        let claim = Key::private_name(&canon);
        let claimed = self
            .store
            .put_if_absent(&claim, Bytes::from(meta.name.clone()))
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        if !claimed {
            let existing = self
                .store
                .get(&claim)
                .await
                .map_err(|e| Error::Storage(e.to_string()))?
                .map(|o| String::from_utf8_lossy(&o.bytes).into_owned())
                .unwrap_or_default();
            if existing != meta.name {
                return Err(Error::BadRequest(format!(
                    "crate was previously named `{existing}`; `{}` differs only by case or `-`/`_`",
                    meta.name
                )));
            }
        }
        self.names.rcu(|cur| {
            let mut n = HashSet::clone(cur);
            n.insert(canon.clone());
            n
        });

        // Owners: the first publisher owns a new crate; later versions need an owner.
        let user = who.user.clone();
        let description = meta.description.clone();
        self.update_meta(&name, |cur| match cur {
            None => Ok((
                CrateMeta {
                    name: meta.name.clone(),
                    owners: vec![user.clone()],
                    description: description.clone(),
                },
                (),
            )),
            Some(mut m) => {
                Self::require_owner(&m, who, &name)?;
                if description.is_some() {
                    m.description = description.clone();
                }
                Ok((m, ()))
            }
        })
        .await?;

        self.store
            .put_if_absent(&Key::private_blob(&cksum), tarball)
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        let line = publish::to_index_line(&meta, &cksum, &publish::pubtime(self.clock.now()));
        let line = serde_json::to_string(&line).map_err(|e| Error::Storage(e.to_string()))?;
        self.update_index(&name, |mut lines| {
            for l in &lines {
                if let Ok(existing) = serde_json::from_str::<IndexLine>(l)
                    && let Ok(ev) = semver::Version::parse(&existing.vers)
                    && ev.major == vers.major
                    && ev.minor == vers.minor
                    && ev.patch == vers.patch
                    && ev.pre == vers.pre
                {
                    return Err(Error::Conflict(format!(
                        "crate version `{}` {} is already uploaded",
                        meta.name, existing.vers
                    )));
                }
            }
            lines.push(line.clone());
            Ok((lines, ()))
        })
        .await?;
        info!(krate = %meta.name, version = %meta.vers, user = %who.user, "published");
        Ok(serde_json::json!({
            "warnings": { "invalid_categories": [], "invalid_badges": [], "other": [] }
        }))
    }

    /// `cargo yank` / `cargo yank --undo`.
    pub async fn set_yanked(
        &self,
        who: Option<&Identity>,
        name: &CrateName,
        version: &str,
        yanked: bool,
    ) -> Result<(), Error> {
        let who = Self::require_publish(who)?;
        let (meta, _) = self
            .load_meta(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no private crate named `{name}`")))?;
        Self::require_owner(&meta, who, name)?;
        self.update_index(name, |lines| {
            let mut found = false;
            let lines = lines
                .into_iter()
                .map(|l| match serde_json::from_str::<serde_json::Value>(&l) {
                    Ok(mut v) if v["vers"] == version => {
                        found = true;
                        v["yanked"] = yanked.into();
                        v.to_string()
                    }
                    _ => l,
                })
                .collect();
            if found {
                Ok((lines, ()))
            } else {
                Err(Error::NotFound(format!(
                    "private crate `{name}` has no version {version}"
                )))
            }
        })
        .await?;
        info!(krate = %name, version, yanked, user = %who.user, "yank state changed");
        Ok(())
    }

    pub async fn owners(&self, name: &CrateName) -> Result<serde_json::Value, Error> {
        let (meta, _) = self
            .load_meta(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no private crate named `{name}`")))?;
        let users: Vec<serde_json::Value> = meta
            .owners
            .iter()
            .enumerate()
            .map(|(i, login)| serde_json::json!({"id": i + 1, "login": login, "name": null}))
            .collect();
        Ok(serde_json::json!({ "users": users }))
    }

    /// `cargo owner --add/--remove`: returns cargo's `{"ok":true,"msg":...}`.
    pub async fn change_owners(
        &self,
        who: Option<&Identity>,
        name: &CrateName,
        users: &[String],
        add: bool,
    ) -> Result<serde_json::Value, Error> {
        let who = Self::require_publish(who)?;
        if users.is_empty() {
            return Err(Error::BadRequest("no users given".into()));
        }
        if add {
            let db = self.token_db().await?;
            if let Some(u) = users.iter().find(|u| !db.has_user(u)) {
                return Err(Error::BadRequest(format!(
                    "unknown user `{u}`: users exist once a token is created for them (`wharf token create --name NAME --user {u}`)"
                )));
            }
        }
        self.update_meta(name, |cur| {
            let mut m =
                cur.ok_or_else(|| Error::NotFound(format!("no private crate named `{name}`")))?;
            Self::require_owner(&m, who, name)?;
            if add {
                for u in users {
                    if !m.owners.contains(u) {
                        m.owners.push(u.clone());
                    }
                }
            } else {
                m.owners.retain(|o| !users.contains(o));
                if m.owners.is_empty() {
                    return Err(Error::BadRequest(format!(
                        "cannot remove every owner of `{name}`"
                    )));
                }
            }
            Ok((m, ()))
        })
        .await?;
        let list = users.join(", ");
        let msg = if add {
            format!("user(s) {list} added as owner(s) of `{name}`")
        } else {
            format!("user(s) {list} removed from the owners of `{name}`")
        };
        info!(krate = %name, user = %who.user, %msg, "owners changed");
        Ok(serde_json::json!({ "ok": true, "msg": msg }))
    }

    /// `cargo search`: matches name or description, case-insensitively.
    pub async fn search(&self, q: &str, per_page: usize) -> Result<serde_json::Value, Error> {
        let q = q.to_lowercase();
        let keys = self
            .store
            .list("private-v1/crates/")
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        let mut hits = Vec::new();
        for k in keys {
            let Ok(Some(o)) = self.store.get(&k).await else {
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<CrateMeta>(&o.bytes) else {
                warn!(key = k.as_str(), "damaged owners record skipped in search");
                continue;
            };
            let desc = meta.description.clone().unwrap_or_default();
            if !(meta.name.to_lowercase().contains(&q) || desc.to_lowercase().contains(&q)) {
                continue;
            }
            let Ok(name) = CrateName::parse(&meta.name) else {
                continue;
            };
            let max = self
                .index_file(&name)
                .await
                .ok()
                .map(|b| max_version(&b))
                .unwrap_or_default();
            hits.push((meta.name, max, meta.description));
        }
        hits.sort_by(|a, b| a.0.cmp(&b.0));
        let total = hits.len();
        let crates: Vec<serde_json::Value> = hits
            .into_iter()
            .take(per_page)
            .map(|(n, v, d)| serde_json::json!({"name": n, "max_version": v, "description": d}))
            .collect();
        Ok(serde_json::json!({ "crates": crates, "meta": { "total": total } }))
    }
}

/// Highest non-yanked version in an index file (any version if all are yanked).
fn max_version(body: &[u8]) -> String {
    let mut all: Vec<(bool, semver::Version)> = body
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<IndexLine>(l).ok())
        .filter_map(|l| semver::Version::parse(&l.vers).ok().map(|v| (!l.yanked, v)))
        .collect();
    all.sort();
    all.last().map(|(_, v)| v.to_string()).unwrap_or_default()
}

fn publish_error(e: publish::PublishError) -> Error {
    match e {
        publish::PublishError::TooLarge(m) => Error::TooLarge(m),
        other => Error::BadRequest(other.to_string()),
    }
}
