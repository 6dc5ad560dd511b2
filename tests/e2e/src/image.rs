//! The images `scripts/images.sh` builds, as the test kubelet ([`crate::node`]) runs
//! them: `<repository>:<tag>` is the OCI image tarball `<name>-<tag>.oci.tar` in the
//! images directory (`<cargo target dir>/images`, where the script writes them), `<name>`
//! being the repository's last path segment. The tarball is unpacked once per manifest
//! digest (its layers extracted in order into a root filesystem, its config read for the
//! entrypoint, command, user, environment and working directory); each pod then gets a
//! copy of that root of its own.
//!
//! A test may give an image a second tag ([`tag`]): the same bytes under a new
//! reference, as `docker tag` or `crane tag` would, for a rollout to a new tag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// An unpacked image.
#[derive(Debug)]
pub struct Image {
    /// The image's root filesystem; never changed (pods get copies).
    pub rootfs: PathBuf,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries of the config, in order.
    pub env: Vec<(String, String)>,
    /// The config's user, numeric (`uid:gid`); root when empty.
    pub user: (u32, u32),
    pub working_dir: String,
    /// The manifest digest.
    pub digest: String,
}

/// Where `scripts/images.sh` writes the tarballs for this build profile.
pub fn images_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMAGES_DIR") {
        return PathBuf::from(dir);
    }
    let profile = crate::profile_dir();
    profile
        .parent()
        .map(|target| target.join("images"))
        .unwrap_or_else(|| PathBuf::from("images"))
}

type Cache = Mutex<BTreeMap<String, Arc<Image>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

fn aliases() -> &'static Mutex<BTreeMap<String, String>> {
    static ALIASES: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    ALIASES.get_or_init(Mutex::default)
}

/// `<name>:<tag>` of a reference (`registry/path/name:tag`, digest ignored).
fn name_and_tag(reference: &str) -> Result<(String, String), String> {
    let without_digest = reference.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    match last.split_once(':') {
        Some((name, tag)) if !name.is_empty() && !tag.is_empty() => {
            Ok((name.to_owned(), tag.to_owned()))
        }
        _ => Err(format!(
            "image {reference}: a tag is required (scripts/images.sh tags images with the chart's appVersion)"
        )),
    }
}

/// Makes `<name>:<new_tag>` resolve to the image `<name>:<existing_tag>`.
pub fn tag(name: &str, existing_tag: &str, new_tag: &str) {
    if let Ok(mut aliases) = aliases().lock() {
        aliases.insert(
            format!("{name}:{new_tag}"),
            format!("{name}:{existing_tag}"),
        );
    }
}

/// The image a pod's `image` names, unpacked.
pub fn resolve(reference: &str) -> Result<Arc<Image>, String> {
    let (name, tag) = name_and_tag(reference)?;
    let mut key = format!("{name}:{tag}");
    if let Some(target) = aliases().lock().ok().and_then(|a| a.get(&key).cloned()) {
        key = target;
    }
    let (name, tag) = name_and_tag(&key)?;
    let archive = images_dir().join(format!("{name}-{tag}.oci.tar"));
    let modified = std::fs::metadata(&archive)
        .and_then(|m| m.modified())
        .map_err(|e| {
            format!(
                "image {reference}: {}: {e} (run scripts/images.sh)",
                archive.display()
            )
        })?;
    let cache_key = format!("{}@{modified:?}", archive.display());
    if let Some(image) = cache().lock().ok().and_then(|c| c.get(&cache_key).cloned()) {
        return Ok(image);
    }
    let image = Arc::new(unpack(&archive).map_err(|e| format!("image {reference}: {e}"))?);
    if let Ok(mut cache) = cache().lock() {
        cache.insert(cache_key, image.clone());
    }
    Ok(image)
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("unsupported digest {digest}"))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Unpacks the tarball into a directory named after its manifest digest (once: a second
/// caller finds it complete).
fn unpack(archive: &Path) -> Result<Image, String> {
    let base = std::env::temp_dir().join("anchorpipe-e2e").join("images");
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let work = base.join(format!("unpack-{}", uuid::Uuid::new_v4()));
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout).map_err(|e| format!("{}: {e}", layout.display()))?;
    let result = unpack_into(archive, &work, &layout, &base);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn unpack_into(archive: &Path, work: &Path, layout: &Path, base: &Path) -> Result<Image, String> {
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(layout))?;
    let index = read_json(&layout.join("index.json"))?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or("index.json names no manifest")?
        .to_owned();
    let manifest = read_json(&blob(layout, &digest)?)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or("the manifest names no config")?;
    let config = read_json(&blob(layout, config_digest)?)?;
    let config = &config["config"];

    let dir = base.join(digest.replace(':', "-"));
    let rootfs = dir.join("rootfs");
    if !dir.join(".complete").is_file() {
        let staged = work.join("rootfs");
        std::fs::create_dir_all(&staged).map_err(|e| format!("{}: {e}", staged.display()))?;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let layer_digest = layer["digest"].as_str().ok_or("a layer without digest")?;
            // GNU tar recognises the compression; owners and modes as in the layer.
            run(Command::new("tar")
                .args(["--same-owner", "--numeric-owner", "-xpf"])
                .arg(blob(layout, layer_digest)?)
                .arg("-C")
                .arg(&staged))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::rename(&staged, &rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
        std::fs::write(dir.join(".complete"), &digest)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }

    let user = config["User"].as_str().unwrap_or_default();
    let user = if user.is_empty() {
        (0, 0)
    } else {
        let (uid, gid) = user.split_once(':').unwrap_or((user, user));
        match (uid.parse(), gid.parse()) {
            (Ok(uid), Ok(gid)) => (uid, gid),
            _ => return Err(format!("image user {user:?} is not numeric uid:gid")),
        }
    };
    let env = strings(&config["Env"])
        .into_iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    Ok(Image {
        rootfs,
        entrypoint: strings(&config["Entrypoint"]),
        cmd: strings(&config["Cmd"]),
        env,
        user,
        working_dir: config["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_owned(),
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_an_image_and_tag() {
        assert_eq!(
            name_and_tag("registry.example/anchorpipe/anchorpipe-ingest:0.1.0").unwrap(),
            ("anchorpipe-ingest".to_owned(), "0.1.0".to_owned())
        );
        assert_eq!(
            name_and_tag("anchorpipe-operator:0.2.0@sha256:00").unwrap(),
            ("anchorpipe-operator".to_owned(), "0.2.0".to_owned())
        );
        assert!(name_and_tag("anchorpipe-ingest").is_err());
    }
}
