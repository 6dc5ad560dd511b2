//! A node of the test cluster whose pods run as local processes: a kubelet without a
//! container runtime, for whatever a Helm release schedules onto it (the operator's
//! Deployment, the migration Job, the uninstall hook).
//!
//! The node is made by the test (`e2e-node-<suffix>`), carries a `NoSchedule` taint and
//! a label of its own name, and is not kwok's: kwok only plays nodes annotated
//! `kwok.x-k8s.io/node=fake`, so the status of every pod bound here is written by this
//! kubelet alone. A release lands here through the chart's own `nodeSelector` and
//! `tolerations` values ([`Node::scheduling`]).
//!
//! What a kubelet and a container runtime do, and how it is done here:
//!
//! - **Image**: `<repository>:<tag>` is the OCI image `scripts/images.sh` built
//!   ([`crate::image`]). Each pod gets a copy of the image's root filesystem and runs
//!   in it (`unshare --root`): the image's entrypoint (or the container's `command`)
//!   with the container's `args` (or the image's `Cmd`), the image's environment and
//!   working directory, as the image's user unless the pod's `securityContext` names
//!   one (`runAsNonRoot` refuses root). The user is a user namespace's mapping of the
//!   image's uid/gid, so the process sees itself as that user. `readOnlyRootFilesystem`
//!   makes the copy read-only.
//! - **Pod network**: every pod gets an address of its own, added to the loopback
//!   interface for as long as the pod lives (`ip addr add 10.250.<node>.<n>/32 dev lo`;
//!   the API server refuses 127.0.0.0/8 in EndpointSlices, so the addresses come from a
//!   private range instead), reported as its `podIP`: EndpointSlices, and an ingress
//!   controller reading them, route to it. An argument binding all interfaces
//!   (`0.0.0.0:<port>`) binds that address, which is what the pod's network namespace
//!   would make of it. Adding addresses needs CAP_NET_ADMIN (root).
//! - **Volumes**: Secret, ConfigMap, emptyDir and projected volumes (ServiceAccount token
//!   from the TokenRequest API bound to the pod, `kube-root-ca.crt`, the namespace) are
//!   written with the kubelet's atomic layout ([`crate::kubelet::atomic_write`]) and
//!   bind-mounted at their mount paths inside the pod's root (read-only when the mount
//!   says so), in a private mount namespace (`unshare --user --map-root-user --mount`),
//!   so in-cluster clients find `/var/run/secrets/kubernetes.io/serviceaccount/{token,
//!   ca.crt,namespace}` where a kubelet puts them. `/etc/hosts` is the kubelet's.
//! - **Environment**: the image's, then `KUBERNETES_SERVICE_HOST`/`_PORT` naming the API
//!   server itself (no Service proxy here), `HOME=/` as a runtime sets it for a user
//!   without a home, then the container's `env` (values, Secret and ConfigMap keys, pod
//!   fields). Nothing of the test process's environment leaks in.
//! - **Status**: Running with the pod address once started, Ready once the HTTP
//!   readiness probe answers 200 (at once without a probe); restarts for
//!   `restartPolicy: Always`; Succeeded/Failed with the exit code otherwise. A deleted pod
//!   gets SIGTERM, SIGKILL after its grace period (at most 10 s), and is then removed.
//!
//! Processes die with the test: `kill_on_drop`, and a parent-death signal (`setpriv
//! --pdeathsig KILL`) for a test process that is killed outright. Pod output goes to
//! `target/e2e-logs/pod-<namespace>-<pod>.log`.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node as NodeObject, Pod, Secret, ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::kubelet::atomic_write;
use crate::{log_dir, suffix};

/// Label and taint key of test nodes; the value is the node's name.
pub const NODE_KEY: &str = "anchorpipe.dev/test-node";

/// How often pods are listed, exits checked and probes run.
const TICK: Duration = Duration::from_millis(200);

/// Upper bound of a deleted pod's grace period here.
const MAX_GRACE: Duration = Duration::from_secs(10);

/// The program that sets up a pod's mount namespace: `<root> <ro|rw> <uid> <gid>
/// <working dir>`, then `<source> <mount path> <ro|rw>` triples up to `--`, then the
/// pod's command. The root (the pod's copy of the image) becomes a mount point, each
/// source is bind-mounted at its path inside it, the root is made read-only when asked,
/// and the command runs with that root in a user namespace that maps the pod's uid and
/// gid to this one. The tools are found on a PATH of their own; the process gets the
/// pod's PATH (or none) and not the shell's PWD. The parent-death signal is set last: nothing after it
/// changes the process's credentials, which would clear it.
const MOUNT_SCRIPT: &str = r#"if [ -n "${PATH+set}" ]; then pod_path=$PATH; fi
PATH=/usr/sbin:/usr/bin:/sbin:/bin
set -e
setpriv=$(command -v setpriv)
unshare=$(command -v unshare)
root=$1 root_mode=$2 uid=$3 gid=$4 workdir=$5
shift 5
mount --bind "$root" "$root"
while [ "$1" != -- ]; do
  target="$root$2"
  if [ -d "$1" ]; then
    mkdir -p "$target"
  else
    mkdir -p "$(dirname "$target")"
    [ -e "$target" ] || : >"$target"
  fi
  mount --bind "$1" "$target"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$target"; fi
  shift 3
done
shift
if [ "$root_mode" = ro ]; then mount -o remount,bind,ro "$root"; fi
unset PWD
if [ -n "${pod_path+set}" ]; then export PATH="$pod_path"; else unset PATH; fi
exec "$setpriv" --pdeathsig KILL -- "$unshare" --user --map-user="$uid" --map-group="$gid" \
  --root="$root" --wd="$workdir" -- "$@"
"#;

type Errors = Arc<Mutex<Vec<String>>>;

/// A test node and the kubelet loop running its pods.
pub struct Node {
    pub name: String,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    errors: Errors,
    root: PathBuf,
}

impl Node {
    /// Registers a fresh node (Ready, tainted for this test only) and starts its kubelet.
    pub async fn start(client: &Client) -> Self {
        let name = format!("e2e-node-{}", suffix());
        let nodes: Api<NodeObject> = Api::all(client.clone());
        let node: NodeObject = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {
                    NODE_KEY: name,
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "anchorpipe.dev/e2e": "true",
                },
            },
        }))
        .unwrap_or_else(|e| panic!("node object: {e}"));
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        let now = now();
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "conditions": [{
                        "type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "test kubelet", "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }],
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": name},
                    ],
                    "capacity": {"cpu": "1k", "memory": "1Ti", "pods": "1k"},
                    "allocatable": {"cpu": "1k", "memory": "1Ti", "pods": "1k"},
                }})),
            )
            .await
            .unwrap_or_else(|e| panic!("node {name} status: {e}"));
        // The API server's TaintNodesByCondition admission gave the new node the
        // not-ready taint, which only the node-lifecycle controller (not run here) would
        // lift: replace it with this node's own taint.
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": [
                    {"key": NODE_KEY, "value": name, "effect": "NoSchedule"}
                ]}})),
            )
            .await
            .unwrap_or_else(|e| panic!("node {name} taints: {e}"));

        let config = kube::Config::infer()
            .await
            .unwrap_or_else(|e| panic!("kube config: {e}"));
        let api_host = config.cluster_url.host().unwrap_or("127.0.0.1").to_owned();
        let api_port = config.cluster_url.port_u16().unwrap_or(443);
        let root = std::env::temp_dir().join("anchorpipe-e2e").join(&name);
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let kubelet = Kubelet {
            client: client.clone(),
            node: name.clone(),
            root: root.clone(),
            api_host,
            api_port,
            // 10.250.<x>.<n>: one /24 per node, picked at random, so nodes of
            // concurrent runs rarely meet (an address in use is skipped).
            ip_prefix: format!("10.250.{}", bytes[1]),
            next_ip: AtomicU32::new(2),
            pods: BTreeMap::new(),
            errors: Errors::default(),
        };
        let errors = kubelet.errors.clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(kubelet.run(stopped));
        Self {
            name,
            client: client.clone(),
            stop: Some(stop),
            task: Some(task),
            errors,
            root,
        }
    }

    /// `nodeSelector` and `tolerations` that put a pod on this node (and only there:
    /// nothing else tolerates its taint).
    pub fn scheduling(&self) -> Value {
        json!({
            "nodeSelector": {NODE_KEY: self.name},
            "tolerations": [{
                "key": NODE_KEY, "operator": "Equal", "value": self.name, "effect": "NoSchedule",
            }],
        })
    }

    /// What went wrong running pods (a pod this kubelet could not run is also marked
    /// Failed with the reason).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The output of a pod's process.
    pub fn log(namespace: &str, pod: &str) -> PathBuf {
        log_dir().join(format!("pod-{namespace}-{pod}.log"))
    }

    /// The directory volume `volume` of pod `uid` is materialized in.
    pub fn volume_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.root.join(uid).join("volumes").join(volume)
    }

    /// Kills every process, removes the pods bound here and the node itself.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={}", self.name));
        for pod in pods
            .list(&on_node)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let _ = api.delete(&pod.name_any(), &force_delete(None)).await;
        }
        let _ = Api::<NodeObject>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A test that panicked: its processes die with the task (kill_on_drop); the
        // node object stays for inspection (labelled anchorpipe.dev/e2e).
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn force_delete(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

/// A bind mount into a pod's root.
struct Mount {
    source: PathBuf,
    path: String,
    read_only: bool,
}

/// How a pod's process is started (again, on a restart).
struct Launch {
    /// The pod's copy of the image's root filesystem.
    root: PathBuf,
    read_only_root: bool,
    user: (u32, u32),
    working_dir: String,
    /// The command and its arguments, as paths inside the root.
    command: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<Mount>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> Result<tokio::process::Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mode = |ro: bool| if ro { "ro" } else { "rw" };
        // By its path in this process's PATH: the child's PATH is the image's.
        let mut command = tokio::process::Command::new(unshare_path());
        command
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "/bin/sh",
                "-c",
                MOUNT_SCRIPT,
                "sh",
            ])
            .arg(&self.root)
            .arg(mode(self.read_only_root))
            .arg(self.user.0.to_string())
            .arg(self.user.1.to_string())
            .arg(&self.working_dir);
        for mount in &self.mounts {
            command
                .arg(&mount.source)
                .arg(&mount.path)
                .arg(mode(mount.read_only));
        }
        command
            .arg("--")
            .args(&self.command)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .kill_on_drop(true);
        command
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", self.command))
    }
}

/// `unshare` as found on this process's PATH.
fn unshare_path() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("unshare"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/unshare"))
}

/// A pod this kubelet has taken on.
struct Running {
    namespace: String,
    name: String,
    container: String,
    image: String,
    launch: Option<Launch>,
    child: Option<tokio::process::Child>,
    restart_policy: String,
    ip: String,
    started_at: String,
    restarts: i32,
    restart_at: Option<Instant>,
    probe: Option<String>,
    next_probe: Instant,
    ready: bool,
    /// A terminal phase was reported; nothing runs any more.
    done: bool,
    grace: Duration,
    terminating_since: Option<Instant>,
    last_delete: Option<Instant>,
    /// The pod's address on the loopback interface, removed when the pod goes.
    address: Option<PodAddress>,
}

/// An address added to the loopback interface for one pod; removed on drop.
struct PodAddress {
    ip: String,
}

impl PodAddress {
    /// Adds `ip`; `Ok(None)` when the address is already in use on this machine.
    fn add(ip: String) -> Result<Option<Self>, String> {
        let out = std::process::Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .output()
            .map_err(|e| format!("ip addr add: {e}"))?;
        if out.status.success() {
            return Ok(Some(Self { ip }));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("File exists") {
            Ok(None)
        } else {
            Err(format!(
                "giving the pod address {ip} (ip addr add, which needs CAP_NET_ADMIN): {}",
                stderr.trim()
            ))
        }
    }
}

impl Drop for PodAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
            .output();
    }
}

struct Kubelet {
    client: Client,
    node: String,
    root: PathBuf,
    api_host: String,
    api_port: u16,
    ip_prefix: String,
    next_ip: AtomicU32,
    pods: BTreeMap<String, Running>,
    errors: Errors,
}

impl Kubelet {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            self.sync().await;
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(TICK) => {}
            }
        }
        for pod in self.pods.values_mut() {
            if let Some(child) = pod.child.as_mut() {
                let _ = child.kill().await;
            }
        }
    }

    fn error(&self, message: String) {
        eprintln!("test kubelet {}: {message}", self.node);
        if let Ok(mut errors) = self.errors.lock() {
            errors.push(message);
        }
    }

    async fn sync(&mut self) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        // The API server may be briefly away (another test restarting it): next tick.
        let Ok(list) = api.list(&on_node).await else {
            return;
        };
        let mut seen = Vec::new();
        for pod in list.items {
            let Some(uid) = pod.uid() else { continue };
            seen.push(uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&pod, &uid).await;
                continue;
            }
            if !self.pods.contains_key(&uid) {
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                self.admit(&pod, &uid).await;
            }
            self.check(&uid).await;
        }
        // Pods that are gone: nothing may keep running for them.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !seen.contains(uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut pod) = self.pods.remove(&uid) {
                if let Some(child) = pod.child.as_mut() {
                    let _ = child.kill().await;
                }
                let _ = std::fs::remove_dir_all(self.root.join(&uid));
            }
        }
    }

    /// The next free address of this node's range, added to the loopback interface.
    fn pod_address(&self) -> Result<PodAddress, String> {
        for _ in 0..254 {
            let n = self.next_ip.fetch_add(1, Ordering::Relaxed) % 254 + 1;
            if let Some(address) = PodAddress::add(format!("{}.{n}", self.ip_prefix))? {
                return Ok(address);
            }
        }
        Err(format!("no free address in {}.0/24", self.ip_prefix))
    }

    /// Takes a new pod on: materializes it, starts its process and reports Running (or
    /// Failed, with the reason, when it cannot be run here).
    async fn admit(&mut self, pod: &Pod, uid: &str) {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let spec = pod.spec.clone().unwrap_or_default();
        let container = spec.containers.first().cloned().unwrap_or_default();
        let address = self.pod_address();
        let ip = address
            .as_ref()
            .map(|a| a.ip.clone())
            .unwrap_or_else(|_| "0.0.0.0".to_owned());
        let mut running = Running {
            namespace: namespace.clone(),
            name: name.clone(),
            container: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            launch: None,
            child: None,
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".to_owned()),
            ip: ip.clone(),
            started_at: now(),
            restarts: 0,
            restart_at: None,
            probe: None,
            next_probe: Instant::now(),
            ready: false,
            done: false,
            grace: Duration::from_secs(
                spec.termination_grace_period_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(30),
            )
            .min(MAX_GRACE),
            terminating_since: None,
            last_delete: None,
            address: None,
        };
        let prepared = match address {
            Ok(address) => {
                running.address = Some(address);
                self.prepare(pod, uid, &ip).await
            }
            Err(e) => Err(e),
        };
        let started = prepared.and_then(|(launch, probe)| {
            let child = launch.spawn()?;
            Ok((launch, probe, child))
        });
        match started {
            Ok((launch, probe, child)) => {
                running.ready = probe.is_none();
                running.probe = probe;
                running.launch = Some(launch);
                running.child = Some(child);
                self.report_running(&running).await;
            }
            Err(message) => {
                self.error(format!("{namespace}/{name}: {message}"));
                running.done = true;
                let status = json!({"status": {
                    "phase": "Failed",
                    "reason": "TestKubelet",
                    "message": message,
                }});
                self.patch_status(&running, status).await;
            }
        }
        self.pods.insert(uid.to_owned(), running);
    }

    /// The process for the pod's only container, and the URL of its readiness probe.
    async fn prepare(
        &self,
        pod: &Pod,
        uid: &str,
        ip: &str,
    ) -> Result<(Launch, Option<String>), String> {
        let namespace = pod.namespace().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        if spec.containers.len() != 1 || spec.init_containers.is_some() {
            return Err("only pods of one container (and no init containers) run here".into());
        }
        let container = &spec.containers[0];
        let image = crate::image::resolve(container.image.as_deref().unwrap_or_default())?;
        let command: Vec<String> = match (&container.command, &container.args) {
            (Some(command), args) => command
                .iter()
                .chain(args.iter().flatten())
                .cloned()
                .collect(),
            (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
            (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
        };
        if command.is_empty() {
            return Err(format!("container {}: nothing to run", container.name));
        }
        let command = command
            .into_iter()
            .map(|a| a.replace("0.0.0.0:", &format!("{ip}:")))
            .collect();
        let user = run_as(&spec, container, image.user)?;
        let read_only_root = container
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false);

        let pod_dir = self.root.join(uid);
        // The pod's copy of the image: directories of its own (mount points are made in
        // them), files hard-linked to the unpacked image.
        let root = pod_dir.join("rootfs");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&pod_dir).map_err(|e| format!("{}: {e}", pod_dir.display()))?;
        let copied = std::process::Command::new("cp")
            .arg("-al")
            .arg(&image.rootfs)
            .arg(&root)
            .output()
            .map_err(|e| format!("cp: {e}"))?;
        if !copied.status.success() {
            return Err(format!(
                "copying the image's root: {}",
                String::from_utf8_lossy(&copied.stderr).trim()
            ));
        }
        let hosts = pod_dir.join("etc-hosts");
        std::fs::write(
            &hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{}\n",
                pod.name_any()
            ),
        )
        .map_err(|e| format!("{}: {e}", hosts.display()))?;
        let mut mounts = vec![Mount {
            source: hosts,
            path: "/etc/hosts".to_owned(),
            read_only: false,
        }];
        let mut volume_dirs = BTreeMap::new();
        for volume in spec.volumes.iter().flatten() {
            let dir = pod_dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let (files, mode) = self.volume_files(pod, volume, ip).await?;
            if let Some(files) = files {
                atomic_write(&dir, &files, mode);
            }
            volume_dirs.insert(volume.name.clone(), dir);
        }
        for mount in container.volume_mounts.iter().flatten() {
            if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
                return Err(format!(
                    "subPath mount {} is not supported",
                    mount.mount_path
                ));
            }
            let dir = volume_dirs
                .get(&mount.name)
                .ok_or_else(|| format!("mount of unknown volume {}", mount.name))?;
            let path = mount.mount_path.trim_end_matches('/');
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(format!("mount path {path} is not absolute and clean"));
            }
            mounts.push(Mount {
                source: dir.clone(),
                path: path.to_owned(),
                read_only: mount.read_only.unwrap_or(false),
            });
        }

        let mut env = image.env.clone();
        env.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "KUBERNETES_SERVICE_HOST" | "KUBERNETES_SERVICE_PORT" | "HOME"
            )
        });
        env.extend([
            ("KUBERNETES_SERVICE_HOST".to_owned(), self.api_host.clone()),
            (
                "KUBERNETES_SERVICE_PORT".to_owned(),
                self.api_port.to_string(),
            ),
            ("HOME".to_owned(), "/".to_owned()),
        ]);
        if container.env_from.is_some() {
            return Err("envFrom is not supported".into());
        }
        for var in container.env.iter().flatten() {
            let value = self.env_value(pod, &namespace, var, ip).await?;
            env.retain(|(k, _)| *k != var.name);
            env.push((var.name.clone(), value));
        }

        let probe = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|get| {
                let port = match &get.port {
                    IntOrString::Int(port) => Ok(*port),
                    IntOrString::String(name) => named_port(container, name),
                }?;
                Ok::<_, String>(format!(
                    "http://{ip}:{port}{}",
                    get.path.as_deref().unwrap_or("/")
                ))
            })
            .transpose()?;
        let launch = Launch {
            root,
            read_only_root,
            user,
            working_dir: image.working_dir.clone(),
            command,
            env,
            mounts,
            log: Node::log(&namespace, &pod.name_any()),
        };
        Ok((launch, probe))
    }

    async fn env_value(
        &self,
        pod: &Pod,
        namespace: &str,
        var: &k8s_openapi::api::core::v1::EnvVar,
        ip: &str,
    ) -> Result<String, String> {
        if let Some(value) = &var.value {
            return Ok(value.clone());
        }
        let Some(from) = &var.value_from else {
            return Ok(String::new());
        };
        if let Some(r) = &from.secret_key_ref {
            let secret = self.secret(namespace, &r.name).await?;
            let bytes = secret
                .data
                .and_then(|mut d| d.remove(&r.key))
                .ok_or_else(|| format!("Secret {} has no key {}", r.name, r.key))?;
            return String::from_utf8(bytes.0)
                .map_err(|_| format!("Secret {} key {} is not UTF-8", r.name, r.key));
        }
        if let Some(r) = &from.config_map_key_ref {
            let cm = self.config_map(namespace, &r.name).await?;
            return cm
                .data
                .and_then(|mut d| d.remove(&r.key))
                .ok_or_else(|| format!("ConfigMap {} has no key {}", r.name, r.key));
        }
        if let Some(r) = &from.field_ref {
            return pod_field(pod, &r.field_path, ip);
        }
        Err(format!("env {}: unsupported source", var.name))
    }

    /// The files of a volume (None: an emptyDir) and their mode.
    async fn volume_files(
        &self,
        pod: &Pod,
        volume: &Volume,
        ip: &str,
    ) -> Result<(Option<BTreeMap<String, Vec<u8>>>, u32), String> {
        const DEFAULT_MODE: i32 = 0o644;
        let namespace = pod.namespace().unwrap_or_default();
        let mode = |m: Option<i32>| u32::try_from(m.unwrap_or(DEFAULT_MODE)).unwrap_or(0o644);
        if volume.empty_dir.is_some() {
            return Ok((None, 0o755));
        }
        if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = self
                .secret(&namespace, &name)
                .await?
                .data
                .unwrap_or_default();
            let data = data.into_iter().map(|(k, v)| (k, v.0)).collect();
            return Ok((
                Some(select(data, s.items.as_deref())?),
                mode(s.default_mode),
            ));
        }
        if let Some(c) = &volume.config_map {
            let data = config_map_files(self.config_map(&namespace, &c.name).await?);
            return Ok((
                Some(select(data, c.items.as_deref())?),
                mode(c.default_mode),
            ));
        }
        let Some(projected) = &volume.projected else {
            return Err(format!("volume {}: unsupported source", volume.name));
        };
        let mut files = BTreeMap::new();
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                files.insert(
                    token.path.clone(),
                    self.token(pod, token).await?.into_bytes(),
                );
            } else if let Some(c) = &source.config_map {
                let data = config_map_files(self.config_map(&namespace, &c.name).await?);
                files.extend(select(data, c.items.as_deref())?);
            } else if let Some(s) = &source.secret {
                let data = self
                    .secret(&namespace, &s.name)
                    .await?
                    .data
                    .unwrap_or_default();
                let data = data.into_iter().map(|(k, v)| (k, v.0)).collect();
                files.extend(select(data, s.items.as_deref())?);
            } else if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    let field = item
                        .field_ref
                        .as_ref()
                        .ok_or_else(|| format!("downwardAPI {}: only fieldRef", item.path))?;
                    files.insert(
                        item.path.clone(),
                        pod_field(pod, &field.field_path, ip)?.into_bytes(),
                    );
                }
            } else {
                return Err(format!("volume {}: unsupported projection", volume.name));
            }
        }
        Ok((Some(files), mode(projected.default_mode)))
    }

    /// A token of the pod's ServiceAccount from the TokenRequest API, bound to the pod,
    /// as the kubelet requests it for a projected volume.
    async fn token(
        &self,
        pod: &Pod,
        projection: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    ) -> Result<String, String> {
        let namespace = pod.namespace().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned());
        let request: TokenRequest = serde_json::from_value(json!({
            "spec": {
                "audiences": projection.audience.iter().collect::<Vec<_>>(),
                "expirationSeconds": projection.expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid(),
                },
            },
        }))
        .map_err(|e| format!("TokenRequest: {e}"))?;
        let answer = Api::<ServiceAccount>::namespaced(self.client.clone(), &namespace)
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("TokenRequest for {namespace}/{account}: {e}"))?;
        answer
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("TokenRequest for {namespace}/{account}: no token"))
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Secret, String> {
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("Secret {namespace}/{name}: {e}"))
    }

    async fn config_map(&self, namespace: &str, name: &str) -> Result<ConfigMap, String> {
        Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))
    }

    /// Exits, restarts and readiness of a running pod.
    async fn check(&mut self, uid: &str) {
        let Some(mut pod) = self.pods.remove(uid) else {
            return;
        };
        if !pod.done {
            self.check_running(&mut pod).await;
        }
        self.pods.insert(uid.to_owned(), pod);
    }

    async fn check_running(&self, pod: &mut Running) {
        if let Some(at) = pod.restart_at {
            if Instant::now() < at {
                return;
            }
            pod.restart_at = None;
            let spawned = pod.launch.as_ref().map(Launch::spawn);
            match spawned {
                Some(Ok(child)) => {
                    pod.child = Some(child);
                    pod.restarts += 1;
                    pod.started_at = now();
                    pod.ready = pod.probe.is_none();
                    self.report_running(pod).await;
                }
                Some(Err(e)) => self.error(format!("{}/{}: {e}", pod.namespace, pod.name)),
                None => {}
            }
            return;
        }
        let exited = pod.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            pod.child = None;
            let code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1);
            let restart = match pod.restart_policy.as_str() {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
            if restart {
                pod.ready = false;
                pod.restart_at = Some(Instant::now() + Duration::from_secs(1));
                self.report_running(pod).await;
            } else {
                pod.done = true;
                self.report_terminated(pod, code).await;
            }
            return;
        }
        if let Some(url) = pod.probe.clone()
            && Instant::now() >= pod.next_probe
        {
            pod.next_probe = Instant::now() + Duration::from_millis(500);
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(1), crate::report::get(&url)).await,
                Ok(Ok((200, _)))
            );
            if ok != pod.ready {
                pod.ready = ok;
                self.report_running(pod).await;
            }
        }
    }

    /// A pod being deleted: stop its process (SIGTERM, SIGKILL after the grace period),
    /// then remove the pod object, as a kubelet confirms a graceful deletion.
    async fn terminate(&mut self, pod: &Pod, uid: &str) {
        let Some(running) = self.pods.get_mut(uid) else {
            // Never ran here (or already finished before this kubelet saw it).
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let _ = api
                .delete(&pod.name_any(), &force_delete(Some(uid.to_owned())))
                .await;
            return;
        };
        running.restart_at = None;
        let since = *running.terminating_since.get_or_insert_with(|| {
            if let Some(pid) = running.child.as_ref().and_then(tokio::process::Child::id) {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            Instant::now()
        });
        let alive = running
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if alive && since.elapsed() < running.grace {
            return;
        }
        if let Some(child) = running.child.as_mut() {
            let _ = child.kill().await;
        }
        running.child = None;
        if running
            .last_delete
            .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        running.last_delete = Some(Instant::now());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &running.namespace);
        let _ = api
            .delete(&running.name, &force_delete(Some(uid.to_owned())))
            .await;
    }

    async fn report_running(&self, pod: &Running) {
        let now = now();
        let ready = if pod.ready { "True" } else { "False" };
        let state = if pod.child.is_some() {
            json!({"running": {"startedAt": pod.started_at}, "waiting": null, "terminated": null})
        } else {
            json!({"waiting": {"reason": "CrashLoopBackOff"}, "running": null, "terminated": null})
        };
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": pod.started_at,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": pod.container,
                "image": pod.image,
                "imageID": "",
                "ready": pod.ready,
                "started": pod.child.is_some(),
                "restartCount": pod.restarts,
                "state": state,
            }],
        }});
        self.patch_status(pod, status).await;
    }

    async fn report_terminated(&self, pod: &Running, code: i32) {
        let now = now();
        let status = json!({"status": {
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "conditions": [
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": pod.container,
                "image": pod.image,
                "imageID": "",
                "ready": false,
                "started": false,
                "restartCount": pod.restarts,
                "state": {"running": null, "waiting": null, "terminated": {
                    "exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" },
                    "startedAt": pod.started_at,
                    "finishedAt": now,
                }},
            }],
        }});
        self.patch_status(pod, status).await;
    }

    async fn patch_status(&self, pod: &Running, status: Value) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        if let Err(e) = api
            .patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Strategic(status),
            )
            .await
        {
            // A pod deleted meanwhile is no error of the pod's.
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                self.error(format!(
                    "{}/{}: status update: {e}",
                    pod.namespace, pod.name
                ));
            }
        }
    }
}

/// The uid and gid a container runs as: its `securityContext`, else the pod's, else the
/// image's user; `runAsNonRoot` refuses root, as a kubelet does.
fn run_as(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    container: &Container,
    image_user: (u32, u32),
) -> Result<(u32, u32), String> {
    let container_ctx = container.security_context.as_ref();
    let pod_ctx = spec.security_context.as_ref();
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let uid = id(container_ctx.and_then(|c| c.run_as_user))
        .or_else(|| id(pod_ctx.and_then(|c| c.run_as_user)))
        .unwrap_or(image_user.0);
    let gid = id(container_ctx.and_then(|c| c.run_as_group))
        .or_else(|| id(pod_ctx.and_then(|c| c.run_as_group)))
        .unwrap_or(image_user.1);
    let non_root = container_ctx
        .and_then(|c| c.run_as_non_root)
        .or_else(|| pod_ctx.and_then(|c| c.run_as_non_root))
        .unwrap_or(false);
    if non_root && uid == 0 {
        return Err(format!(
            "container {} has runAsNonRoot and its image will run as root",
            container.name
        ));
    }
    Ok((uid, gid))
}

fn named_port(container: &Container, name: &str) -> Result<i32, String> {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
        .ok_or_else(|| format!("no container port named {name}"))
}

fn pod_field(pod: &Pod, path: &str, ip: &str) -> Result<String, String> {
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => Some(pod.name_any()),
        "metadata.namespace" => pod.namespace(),
        "metadata.uid" => pod.uid(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(ip.to_owned()),
        "status.hostIP" => Some("127.0.0.1".to_owned()),
        _ => return Err(format!("field {path} is not supported")),
    };
    Ok(value.unwrap_or_default())
}

/// A ConfigMap's `data` and `binaryData` as files, the way a kubelet projects them.
pub(crate) fn config_map_files(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    files.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    files
}

/// Every key, or only the listed ones under their paths.
fn select(
    mut data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let Some(items) = items else {
        return Ok(data);
    };
    items
        .iter()
        .map(|item| {
            let content = data
                .remove(&item.key)
                .ok_or_else(|| format!("no key {}", item.key))?;
            if item.path.contains('/') {
                return Err(format!("nested path {} is not supported", item.path));
            }
            Ok((item.path.clone(), content))
        })
        .collect()
}

/// Whether this machine can give pods their mounts (unprivileged user namespaces).
pub fn mount_namespaces_available() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/secrets")
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "unshare --user --mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
