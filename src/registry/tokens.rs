//! API tokens: generated at random, shown once, stored only as sha256 hashes in one store
//! object that the CLI edits with conditional replaces and the server re-reads every second.
//! Lookups compare every stored hash in constant time.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::store::{Key, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publish, yank and change owners (and read).
    Publish,
    /// Read the private index and download private crates.
    Read,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique name of the token (e.g. `alice-laptop`, `ci`).
    pub name: String,
    /// The user the token acts as; crate owners are users.
    pub user: String,
    pub scope: Scope,
    /// Lower-case hex sha256 of the token.
    pub sha256: String,
    pub created: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenDb {
    pub tokens: Vec<TokenRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token named `{0}` already exists (revoke it first)")]
    Exists(String),
    #[error("token names and users may use letters, digits, `-`, `_` and `.`: `{0}`")]
    BadName(String),
    #[error("the token database is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the token database kept changing under us; try again")]
    Contended,
}

pub fn key() -> Key {
    Key::meta("tokens-v1.json")
}

pub fn hash(token: &str) -> String {
    crate::index::sha256_hex(token.as_bytes())
}

/// A new random token: `wharf_` and 40 hex digits (160 bits).
pub fn generate() -> String {
    let mut b = [0u8; 20];
    // The OS RNG failing is not something to continue from.
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    format!("wharf_{}", hex::encode(b))
}

impl TokenDb {
    /// The record for `token`, comparing against every stored hash without early exit.
    pub fn find(&self, token: &str) -> Option<&TokenRecord> {
        let h = hash(token);
        let mut found = None;
        for rec in &self.tokens {
            if bool::from(rec.sha256.as_bytes().ct_eq(h.as_bytes())) {
                found = Some(rec);
            }
        }
        found
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.tokens.iter().any(|t| t.user == user)
    }
}

pub async fn load(store: &dyn Store) -> Result<(TokenDb, Option<String>), TokenError> {
    match store.get(&key()).await? {
        None => Ok((TokenDb::default(), None)),
        Some(o) => serde_json::from_slice(&o.bytes)
            .map(|db| (db, Some(o.version)))
            .map_err(|e| TokenError::Damaged(e.to_string())),
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Applies `f` to the database with a compare-and-swap loop.
async fn update<T>(
    store: &dyn Store,
    mut f: impl FnMut(&mut TokenDb) -> Result<T, TokenError>,
) -> Result<T, TokenError> {
    for _ in 0..20 {
        let (mut db, version) = load(store).await?;
        let out = f(&mut db)?;
        let bytes = Bytes::from(serde_json::to_vec_pretty(&db).unwrap_or_default());
        if store.replace_if(&key(), version.as_deref(), bytes).await? {
            return Ok(out);
        }
    }
    Err(TokenError::Contended)
}

/// Creates a token and returns it; only its hash is stored.
pub async fn create(
    store: &dyn Store,
    name: &str,
    user: &str,
    scope: Scope,
    now: std::time::SystemTime,
) -> Result<String, TokenError> {
    for l in [name, user] {
        if !valid_label(l) {
            return Err(TokenError::BadName(l.to_owned()));
        }
    }
    let token = generate();
    let rec = TokenRecord {
        name: name.to_owned(),
        user: user.to_owned(),
        scope,
        sha256: hash(&token),
        created: crate::registry::publish::pubtime(now),
    };
    update(store, |db| {
        if db.tokens.iter().any(|t| t.name == rec.name) {
            return Err(TokenError::Exists(rec.name.clone()));
        }
        db.tokens.push(rec.clone());
        Ok(())
    })
    .await?;
    Ok(token)
}

/// Removes the token called `name`; false if there was none.
pub async fn revoke(store: &dyn Store, name: &str) -> Result<bool, TokenError> {
    update(store, |db| {
        let before = db.tokens.len();
        db.tokens.retain(|t| t.name != name);
        Ok(db.tokens.len() != before)
    })
    .await
}

pub type Shared = Arc<TokenDb>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsStore;

    #[tokio::test]
    async fn create_find_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path());
        let now = std::time::SystemTime::now();
        let t = create(&s, "ci", "alice", Scope::Publish, now)
            .await
            .unwrap();
        assert!(t.starts_with("wharf_") && t.len() == 46);
        assert!(matches!(
            create(&s, "ci", "bob", Scope::Read, now).await,
            Err(TokenError::Exists(_))
        ));
        assert!(matches!(
            create(&s, "bad name", "bob", Scope::Read, now).await,
            Err(TokenError::BadName(_))
        ));
        let (db, _) = load(&s).await.unwrap();
        let rec = db.find(&t).unwrap();
        assert_eq!((rec.user.as_str(), rec.scope), ("alice", Scope::Publish));
        assert!(db.find("wharf_wrong").is_none());
        // Only the hash is stored.
        let raw = std::fs::read_to_string(dir.path().join(key().as_str())).unwrap();
        assert!(!raw.contains(&t) && raw.contains(&hash(&t)));
        assert!(revoke(&s, "ci").await.unwrap());
        assert!(!revoke(&s, "ci").await.unwrap());
        assert!(load(&s).await.unwrap().0.find(&t).is_none());
    }
}
