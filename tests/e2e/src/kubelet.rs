//! A kubelet for one pod of the operator's Deployment, minus the container runtime: the
//! pod template's Secret and ConfigMap volumes become directories laid out as the
//! kubelet lays them out, its environment is resolved from the referenced Secrets, and
//! `anchorpipe-ingest` runs with exactly the container's arguments.
//!
//! The only rewrites are the ones a container boundary makes for free: mount paths map
//! to per-pod temp directories, and the listen address becomes a free loopback port.
//! Nothing about the tenant comes from the test.
//!
//! Volume layout (the kubelet's atomic writer): the files live in a timestamped
//! `..<ts>` directory, `..data` is a symlink to it, and each visible entry is a symlink
//! through `..data`. An update writes a new `..<ts>` directory, swaps `..data` with a
//! rename (atomic), fixes up the visible symlinks and removes the old directory — which
//! is what makes a key rotation observable to the ingest process without a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Secret, Volume};
use kube::{Api, Client};

use crate::{binary, eventually, log_dir};

/// What a volume is backed by.
#[derive(Debug, Clone)]
enum Source {
    Secret { name: String, mode: u32 },
    ConfigMap { name: String, mode: u32 },
    EmptyDir,
}

#[derive(Debug)]
struct MountedVolume {
    source: Source,
    dir: PathBuf,
}

/// One pod of a Deployment, materialized on the local file system.
pub struct Pod {
    client: Client,
    namespace: String,
    root: PathBuf,
    volumes: BTreeMap<String, MountedVolume>,
    /// The container's arguments with mount paths and the listen address rewritten.
    pub args: Vec<String>,
    /// The container's environment, resolved.
    pub env: Vec<(String, String)>,
    /// Where the process listens.
    pub listen: SocketAddr,
    readiness_path: String,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl Pod {
    /// Reads the Deployment's pod template and materializes it.
    pub async fn from_deployment(client: &Client, namespace: &str, name: &str) -> Self {
        let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading Deployment {namespace}/{name}: {e}"));
        let spec: PodSpec = deployment
            .spec
            .template
            .spec
            .unwrap_or_else(|| panic!("Deployment {name} has no pod template"));
        assert_eq!(spec.containers.len(), 1, "expected one container");
        let container = spec.containers[0].clone();
        assert!(
            container.command.is_none(),
            "the container overrides the image entrypoint: {:?}",
            container.command
        );
        let root = std::env::temp_dir()
            .join("anchorpipe-e2e")
            .join(format!("{namespace}-{}", crate::suffix()));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let mut volumes = BTreeMap::new();
        for volume in spec.volumes.iter().flatten() {
            let mounted = MountedVolume {
                source: source(volume),
                dir: root.join(&volume.name),
            };
            std::fs::create_dir_all(&mounted.dir)
                .unwrap_or_else(|e| panic!("{}: {e}", mounted.dir.display()));
            volumes.insert(volume.name.clone(), mounted);
        }
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let args = rewrite_args(&container, &volumes, listen);
        let readiness_path = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
            .unwrap_or_else(|| panic!("the container has no HTTP readiness probe"));
        let mut pod = Self {
            client: client.clone(),
            namespace: namespace.to_owned(),
            log: log_dir().join(format!("{namespace}-{name}-{}.log", listen.port())),
            root,
            volumes,
            args,
            env: Vec::new(),
            listen,
            readiness_path,
            child: None,
        };
        pod.env = pod.resolve_env(&container).await;
        pod.sync_volumes().await;
        pod
    }

    async fn resolve_env(&self, container: &Container) -> Vec<(String, String)> {
        assert!(
            container.env_from.is_none(),
            "envFrom is not materialized by this test kubelet"
        );
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            let value = if let Some(value) = &var.value {
                value.clone()
            } else if let Some(from) = &var.value_from {
                if let Some(r) = &from.secret_key_ref {
                    let secret = self.secret(&r.name).await;
                    let bytes = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(&r.key))
                        .unwrap_or_else(|| panic!("Secret {} has no key {}", r.name, r.key));
                    String::from_utf8(bytes.0.clone())
                        .unwrap_or_else(|_| panic!("Secret {} key {} is not UTF-8", r.name, r.key))
                } else if let Some(r) = &from.config_map_key_ref {
                    let cm = self.config_map(&r.name).await;
                    cm.data
                        .as_ref()
                        .and_then(|d| d.get(&r.key))
                        .cloned()
                        .unwrap_or_else(|| panic!("ConfigMap {} has no key {}", r.name, r.key))
                } else {
                    panic!(
                        "env {} uses a source this test kubelet does not resolve",
                        var.name
                    )
                }
            } else {
                String::new()
            };
            env.push((var.name.clone(), value));
        }
        env
    }

    async fn secret(&self, name: &str) -> Secret {
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading Secret {}/{name}: {e}", self.namespace))
    }

    async fn config_map(&self, name: &str) -> ConfigMap {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading ConfigMap {}/{name}: {e}", self.namespace))
    }

    /// Re-reads every Secret and ConfigMap volume from the API server and updates the
    /// directories the way the kubelet's periodic sync does.
    pub async fn sync_volumes(&self) {
        for volume in self.volumes.values() {
            let (files, mode) = match &volume.source {
                Source::Secret { name, mode } => {
                    let secret = self.secret(name).await;
                    let files: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    (files, *mode)
                }
                Source::ConfigMap { name, mode } => {
                    let cm = self.config_map(name).await;
                    (crate::node::config_map_files(cm), *mode)
                }
                Source::EmptyDir => continue,
            };
            atomic_write(&volume.dir, &files, mode);
        }
    }

    fn command(&self, args: &[String]) -> tokio::process::Command {
        let log = std::fs::File::create(&self.log)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .unwrap_or_else(|e| panic!("{}: {e}", self.log.display()));
        let mut command = tokio::process::Command::new(binary("anchorpipe-ingest"));
        // The container sees only its own environment.
        command
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .kill_on_drop(true);
        command
    }

    /// Runs `anchorpipe-ingest migrate` with the pod's environment, as an init job of the
    /// platform would before the pods start.
    pub async fn migrate(&self) {
        let status = self
            .command(&["migrate".to_owned()])
            .status()
            .await
            .unwrap_or_else(|e| panic!("anchorpipe-ingest migrate: {e}"));
        assert!(
            status.success(),
            "anchorpipe-ingest migrate failed; see {}",
            self.log.display()
        );
    }

    /// Starts the container's process and waits for its readiness probe.
    pub async fn start(&mut self) {
        let child = self
            .command(&self.args)
            .spawn()
            .unwrap_or_else(|e| panic!("starting anchorpipe-ingest: {e}"));
        self.child = Some(child);
        let url = format!("http://{}{}", self.listen, self.readiness_path);
        let log = self.log.clone();
        eventually(
            &format!("ingest readiness at {url} (log {})", log.display()),
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let (status, body) = crate::report::get(&url).await?;
                    if status == 200 {
                        Ok(())
                    } else {
                        Err(format!("{status} {body}"))
                    }
                }
            },
        )
        .await;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The process is still running (it was never restarted by the test).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Directory a volume is materialized in.
    pub fn volume_dir(&self, volume: &str) -> &Path {
        &self
            .volumes
            .get(volume)
            .unwrap_or_else(|| panic!("no volume {volume}"))
            .dir
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn source(volume: &Volume) -> Source {
    // The kubelet's default file mode for Secret and ConfigMap volumes.
    const DEFAULT_MODE: i32 = 0o644;
    if let Some(s) = &volume.secret {
        assert!(s.items.is_none(), "secret items are not materialized");
        Source::Secret {
            name: s.secret_name.clone().unwrap_or_default(),
            mode: u32::try_from(s.default_mode.unwrap_or(DEFAULT_MODE)).unwrap_or(0o644),
        }
    } else if let Some(c) = &volume.config_map {
        assert!(c.items.is_none(), "configMap items are not materialized");
        Source::ConfigMap {
            name: c.name.clone(),
            mode: u32::try_from(c.default_mode.unwrap_or(DEFAULT_MODE)).unwrap_or(0o644),
        }
    } else if volume.empty_dir.is_some() {
        Source::EmptyDir
    } else {
        panic!(
            "volume {} has a source this test kubelet does not materialize",
            volume.name
        )
    }
}

/// The container's args with each mount path mapped to its volume directory (longest
/// mount path first) and the `--listen` address replaced.
fn rewrite_args(
    container: &Container,
    volumes: &BTreeMap<String, MountedVolume>,
    listen: SocketAddr,
) -> Vec<String> {
    let mut mounts: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            assert!(m.sub_path.is_none(), "subPath mounts are not materialized");
            let dir = volumes
                .get(&m.name)
                .unwrap_or_else(|| panic!("mount of unknown volume {}", m.name))
                .dir
                .clone();
            (m.mount_path.trim_end_matches('/').to_owned(), dir)
        })
        .collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let args = container.args.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(args.len());
    let mut next_is_listen = false;
    for arg in args {
        if next_is_listen {
            out.push(listen.to_string());
            next_is_listen = false;
            continue;
        }
        if arg == "--listen" {
            next_is_listen = true;
            out.push(arg);
            continue;
        }
        if arg.starts_with("--listen=") {
            out.push(format!("--listen={listen}"));
            continue;
        }
        let mapped = mounts.iter().find_map(|(path, dir)| {
            let rest = arg.strip_prefix(path.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", dir.display()))
        });
        out.push(mapped.unwrap_or(arg));
    }
    out
}

/// Writes `files` into `dir` the way the kubelet's atomic writer does (see the module
/// docs): readers see either the old set or the new one, never a mix.
pub fn atomic_write(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) {
    let fail = |what: &str, e: std::io::Error| -> ! { panic!("{what} in {}: {e}", dir.display()) };
    let stamp = format!(
        "..e2e_{}_{}",
        std::process::id(),
        GENERATION.fetch_add(1, Ordering::Relaxed)
    );
    let data_dir = dir.join(&stamp);
    std::fs::create_dir(&data_dir).unwrap_or_else(|e| fail("mkdir", e));
    for (name, content) in files {
        let path = data_dir.join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| fail("write", e));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| fail("chmod", e));
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).unwrap_or_else(|e| fail("symlink ..data_tmp", e));
    std::fs::rename(&tmp, dir.join("..data")).unwrap_or_else(|e| fail("swap ..data", e));
    for name in files.keys() {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).unwrap_or_else(|e| fail("symlink", e));
        }
    }
    for entry in std::fs::read_dir(dir)
        .unwrap_or_else(|e| fail("readdir", e))
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "..data" || name == stamp {
            continue;
        }
        if name.starts_with("..") {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if !files.contains_key(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
