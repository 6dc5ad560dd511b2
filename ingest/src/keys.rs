//! The HMAC key set, read from a keys directory (one file per key id, the way a mounted
//! Kubernetes Secret appears) and re-read whenever the directory's contents change.
//!
//! Every key in the directory verifies: the operator keeps the previous key in the
//! Secret during a rotation's grace period and removes it afterwards, so the directory
//! *is* the set of currently valid keys. The kubelet updates a mounted Secret by swapping
//! a `..data` symlink, so entries starting with `.` are skipped and the whole directory
//! is re-read on every poll; a poll is a handful of small reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use tokio_util::sync::CancellationToken;

/// Prefix of a Standard Webhooks secret; the rest is the base64 key.
const WHSEC_PREFIX: &str = "whsec_";

/// Shortest key accepted, in bytes (128 bits): HMAC-SHA256 is only as strong as its key,
/// and the Standard Webhooks spec mints 24 to 64 bytes. Applies to the decoded part of a
/// `whsec_` secret and to a plain secret as the legacy clients use it.
pub const MIN_KEY_BYTES: usize = 16;

/// One verification key.
#[derive(Clone)]
pub struct Key {
    /// The key id (the file name).
    pub id: String,
    /// Key bytes for the legacy scheme: the secret string as the existing clients use it
    /// (`openssl dgst -hmac "$SECRET"`).
    pub legacy: Vec<u8>,
    /// Key bytes for Standard Webhooks: the base64-decoded part of a `whsec_` secret, or
    /// the raw secret when it has no such prefix.
    pub webhook: Vec<u8>,
}

impl std::fmt::Debug for Key {
    // Key material is never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a key file was not loaded. Never carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakKey {
    #[error("the part after `whsec_` is not valid base64")]
    NotBase64,
    #[error("key is {0} bytes; at least {MIN_KEY_BYTES} are required")]
    TooShort(usize),
}

impl Key {
    /// Checks the key material is long enough to be a key at all.
    pub fn check_strength(secret: &str) -> Result<(), WeakKey> {
        let secret = secret.trim();
        let len = match secret.strip_prefix(WHSEC_PREFIX) {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| WeakKey::NotBase64)?
                .len(),
            None => secret.len(),
        };
        if len < MIN_KEY_BYTES {
            return Err(WeakKey::TooShort(len));
        }
        Ok(())
    }

    /// Builds a key from a secret string, as found in a key file.
    pub fn from_secret(id: impl Into<String>, secret: &str) -> Self {
        let secret = secret.trim();
        let webhook = secret
            .strip_prefix(WHSEC_PREFIX)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .unwrap_or_else(|| secret.as_bytes().to_vec());
        Self {
            id: id.into(),
            legacy: secret.as_bytes().to_vec(),
            webhook,
        }
    }
}

/// The keys valid right now.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    pub fn new(keys: Vec<Key>) -> Self {
        Self { keys }
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read keys directory {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// File name → contents of the key files in `dir`.
fn read_dir_contents(dir: &Path) -> Result<BTreeMap<String, String>, KeysError> {
    let read_err = |source| KeysError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinks (the kubelet's layout); skip directories and unreadable entries.
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(name, text);
            }
            Err(error) => {
                tracing::warn!(key_id = %name, %error, "skipping unreadable key file");
            }
        }
    }
    Ok(files)
}

fn key_set_from(files: &BTreeMap<String, String>) -> KeySet {
    let keys = files
        .iter()
        .filter(|(id, secret)| match Key::check_strength(secret) {
            Ok(()) => true,
            Err(reason) => {
                // The id only: the material, even a short one, never reaches a log.
                tracing::error!(key_id = %id, %reason, "refusing unusable HMAC key");
                false
            }
        })
        .map(|(id, secret)| Key::from_secret(id.clone(), secret))
        .collect();
    KeySet::new(keys)
}

/// Shared, hot-swappable key set.
#[derive(Clone)]
pub struct KeyStore {
    current: Arc<RwLock<Arc<KeySet>>>,
}

impl KeyStore {
    /// A store with fixed keys (tests, benchmarks).
    pub fn fixed(keys: KeySet) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(keys))),
        }
    }

    /// Loads the keys in `dir`; fails if the directory cannot be read.
    pub fn load(dir: &Path) -> Result<Self, KeysError> {
        let files = read_dir_contents(dir)?;
        let set = key_set_from(&files);
        if set.is_empty() {
            tracing::error!("no usable HMAC key; the pod stays not ready until one is mounted");
        }
        tracing::info!(key_ids = ?set.ids(), "loaded HMAC keys");
        Ok(Self::fixed(set))
    }

    /// The keys valid now.
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            // A writer panicked mid-swap; the Arc inside is still whole.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// Re-reads `dir` every `interval` and swaps the key set when the files changed.
    /// A directory that cannot be read keeps the previous keys (logged), so a transient
    /// kubelet hiccup never locks every client out.
    pub fn watch(
        &self,
        dir: PathBuf,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            // The first poll always installs what it reads, so a change between `load`
            // and this task starting cannot be missed.
            let mut last: Option<BTreeMap<String, String>> = None;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let dir2 = dir.clone();
                let read = tokio::task::spawn_blocking(move || read_dir_contents(&dir2)).await;
                match read {
                    Ok(Ok(files)) => {
                        if last.as_ref() != Some(&files) {
                            let set = key_set_from(&files);
                            if last.is_some() {
                                tracing::info!(key_ids = ?set.ids(), "HMAC keys changed; reloaded");
                            }
                            store.replace(set);
                            last = Some(files);
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "keeping previous HMAC keys");
                    }
                    Err(error) => tracing::warn!(%error, "key reload task failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsec_keys_decode_for_webhooks_and_stay_raw_for_legacy() {
        let key = Key::from_secret("k1", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
        assert_eq!(key.legacy, b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(key.webhook.len(), 24);
        let plain = Key::from_secret("k2", "s3cret");
        assert_eq!(plain.webhook, b"s3cret");
        assert!(!format!("{plain:?}").contains("s3cret"));
    }

    #[test]
    fn loads_kubelet_layout_and_skips_dot_entries_and_empty_files() {
        let dir = std::env::temp_dir().join(format!("keys-{}", uuid::Uuid::new_v4()));
        let data = dir.join("..2026_11_28_data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("k1"), "one-long-enough-secret").unwrap();
        std::fs::write(data.join("k2"), "  \n").unwrap();
        std::os::unix::fs::symlink("..2026_11_28_data", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/k1", dir.join("k1")).unwrap();
        std::os::unix::fs::symlink("..data/k2", dir.join("k2")).unwrap();
        let store = KeyStore::load(&dir).unwrap();
        assert_eq!(store.current().ids(), vec!["k1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_and_malformed_keys_are_refused_at_load() {
        assert_eq!(Key::check_strength("whsec_"), Err(WeakKey::TooShort(0)));
        assert_eq!(
            Key::check_strength("whsec_c2hvcnQ="),
            Err(WeakKey::TooShort(5))
        );
        assert_eq!(Key::check_strength("whsec_!!!"), Err(WeakKey::NotBase64));
        assert_eq!(Key::check_strength("short"), Err(WeakKey::TooShort(5)));
        assert!(Key::check_strength("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        let dir = std::env::temp_dir().join(format!("keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty"), "whsec_").unwrap();
        std::fs::write(dir.join("good"), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let store = KeyStore::load(&dir).unwrap();
        assert_eq!(store.current().ids(), vec!["good"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn watch_picks_up_a_rotation_without_restart() {
        let dir = std::env::temp_dir().join(format!("keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k1"), "one-long-enough-secret").unwrap();
        let store = KeyStore::load(&dir).unwrap();
        let shutdown = CancellationToken::new();
        let task = store.watch(dir.clone(), Duration::from_millis(20), shutdown.clone());
        std::fs::write(dir.join("k2"), "two-long-enough-secret").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.current().ids() != vec!["k1", "k2"] {
            assert!(tokio::time::Instant::now() < deadline, "rotation not seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::remove_file(dir.join("k1")).unwrap();
        while store.current().ids() != vec!["k2"] {
            assert!(tokio::time::Instant::now() < deadline, "removal not seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
