//! An in-memory Kubernetes API server for the operator's tests.
//!
//! It keeps objects by URL path and implements just enough of the API semantics the
//! operator relies on: server-side apply (the operator is the only writer, so the
//! applied object replaces the stored one, keeping server-set metadata and status),
//! status subresource patches, JSON and merge patches (finalizers, events), create,
//! replace with optimistic concurrency (leases), deletion with finalizers, and 404s.

#![allow(dead_code)]

pub mod accounts;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// A kube client whose requests are served by `store`.
pub fn client(store: Arc<Mutex<Store>>) -> kube::Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let store = store.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let content_type = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let (status, value) = store
                .lock()
                .unwrap()
                .handle(method, &path, &content_type, body);
            let response = Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&value).unwrap()))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    kube::Client::new(service, "default")
}

#[derive(Default)]
pub struct Store {
    pub objects: BTreeMap<String, Value>,
    pub requests: Vec<(Method, String)>,
    pub next_uid: u64,
    pub resource_version: u64,
    /// What the server stamps as creation and deletion time.
    pub now: String,
    /// Namespaces being deleted: creating objects in them is refused, as the
    /// NamespaceLifecycle admission plugin does.
    pub terminating: Vec<String>,
}

pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message, "metadata": {}})
}

fn merge(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().unwrap();
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("not a patch")? {
        let path = op["path"].as_str().ok_or("no path")?;
        let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
        match op["op"].as_str() {
            Some("test") => {
                let current = doc.pointer(path).cloned().unwrap_or(Value::Null);
                if current != op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") | Some("replace") => {
                let target = doc.pointer_mut(parent).ok_or("no parent")?;
                match target {
                    Value::Array(items) if last == "-" => items.push(op["value"].clone()),
                    Value::Array(items) => {
                        items.insert(last.parse().map_err(|_| "index")?, op["value"].clone())
                    }
                    Value::Object(map) => {
                        map.insert(last.to_owned(), op["value"].clone());
                    }
                    _ => return Err("bad parent".into()),
                }
            }
            Some("remove") => {
                let target = doc.pointer_mut(parent).ok_or("no parent")?;
                match target {
                    Value::Array(items) => {
                        items.remove(last.parse::<usize>().map_err(|_| "index")?);
                    }
                    Value::Object(map) => {
                        map.remove(last);
                    }
                    _ => return Err("bad parent".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

impl Store {
    pub fn stamp_new(&mut self, obj: &mut Value, path: &str) {
        self.next_uid += 1;
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("uid".into(), json!(format!("uid-{}", self.next_uid)));
        meta.insert("creationTimestamp".into(), json!(self.now.clone()));
        meta.entry("generation").or_insert(json!(1));
        let name = path.rsplit('/').next().unwrap();
        meta.insert("name".into(), json!(name));
    }

    pub fn bump(&mut self, obj: &mut Value) {
        self.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
    }

    /// Removes an object being deleted once its last finalizer is gone.
    fn settle(&mut self, path: &str) {
        let gone = self.objects.get(path).is_some_and(|o| {
            o["metadata"].get("deletionTimestamp").is_some()
                && o["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty())
        });
        if gone {
            self.objects.remove(path);
        }
    }

    fn is_terminating(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip_while(|s| *s != "namespaces");
        parts
            .nth(1)
            .is_some_and(|ns| self.terminating.iter().any(|t| t == ns))
    }

    pub fn handle(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.requests.push((method.clone(), path.to_owned()));
        let (path, subresource) = match path.strip_suffix("/status") {
            Some(p) => (p.to_owned(), true),
            None => (path.to_owned(), false),
        };
        let not_found = (
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound", "not found"),
        );
        match method {
            Method::GET => match self.objects.get(&path) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => not_found,
            },
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or("generated")
                    .to_owned();
                let path = format!("{path}/{name}");
                if self.objects.contains_key(&path) {
                    return (
                        StatusCode::CONFLICT,
                        status_body(409, "AlreadyExists", "exists"),
                    );
                }
                let mut obj = body;
                self.stamp_new(&mut obj, &path);
                self.bump(&mut obj);
                self.objects.insert(path, obj.clone());
                (StatusCode::CREATED, obj)
            }
            Method::PATCH if !self.objects.contains_key(&path) && self.is_terminating(&path) => {
                let namespace = path.split('/').skip_while(|s| *s != "namespaces").nth(1);
                let namespace = namespace.unwrap_or_default();
                let message = format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                );
                (
                    StatusCode::FORBIDDEN,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                           "reason": "Forbidden", "message": message,
                           "details": {"causes": [{"reason": "NamespaceTerminating",
                                                   "field": "metadata.namespace", "message": message}]}}),
                )
            }
            Method::PATCH if content_type.starts_with("application/apply-patch") => {
                if subresource {
                    let Some(obj) = self.objects.get_mut(&path) else {
                        return not_found;
                    };
                    obj["status"] = body["status"].clone();
                    let mut obj = obj.clone();
                    self.bump(&mut obj);
                    self.objects.insert(path, obj.clone());
                    return (StatusCode::OK, obj);
                }
                let mut obj = body;
                match self.objects.get(&path) {
                    Some(old) => {
                        for key in [
                            "uid",
                            "creationTimestamp",
                            "generation",
                            "finalizers",
                            "deletionTimestamp",
                        ] {
                            if let Some(v) = old["metadata"].get(key) {
                                obj["metadata"][key] = v.clone();
                            }
                        }
                        if let Some(status) = old.get("status") {
                            obj["status"] = status.clone();
                        }
                        // As the API server does: a new spec is a new generation, which
                        // the (stale) status has not observed yet.
                        if old.get("spec") != obj.get("spec")
                            && let Some(g) = old["metadata"]["generation"].as_i64()
                        {
                            obj["metadata"]["generation"] = json!(g + 1);
                        }
                    }
                    None => self.stamp_new(&mut obj, &path),
                }
                self.bump(&mut obj);
                self.objects.insert(path, obj.clone());
                (StatusCode::OK, obj)
            }
            Method::PATCH => {
                let Some(mut obj) = self.objects.get(&path).cloned() else {
                    return not_found;
                };
                if content_type.starts_with("application/json-patch") {
                    if let Err(e) = json_patch(&mut obj, &body) {
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            status_body(422, "Invalid", &e),
                        );
                    }
                } else {
                    let expected = body["metadata"]["resourceVersion"].clone();
                    if !expected.is_null() && expected != obj["metadata"]["resourceVersion"] {
                        return (StatusCode::CONFLICT, status_body(409, "Conflict", "stale"));
                    }
                    let mut body = body;
                    if let Some(m) = body["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                    merge(&mut obj, &body);
                }
                self.bump(&mut obj);
                self.objects.insert(path.clone(), obj.clone());
                self.settle(&path);
                (StatusCode::OK, obj)
            }
            Method::PUT => {
                let Some(old) = self.objects.get(&path).cloned() else {
                    return not_found;
                };
                if body["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                    return (
                        StatusCode::CONFLICT,
                        status_body(409, "Conflict", "the object has been modified"),
                    );
                }
                let mut obj = body;
                for key in ["uid", "creationTimestamp", "generation"] {
                    if let Some(v) = old["metadata"].get(key) {
                        obj["metadata"][key] = v.clone();
                    }
                }
                self.bump(&mut obj);
                self.objects.insert(path, obj.clone());
                (StatusCode::OK, obj)
            }
            Method::DELETE => {
                let Some(obj) = self.objects.get_mut(&path) else {
                    return not_found;
                };
                if obj["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
                {
                    obj["metadata"]["deletionTimestamp"] = json!(self.now.clone());
                    let obj = obj.clone();
                    return (StatusCode::OK, obj);
                }
                let obj = self.objects.remove(&path).unwrap();
                (StatusCode::OK, obj)
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(405, "MethodNotAllowed", "no"),
            ),
        }
    }
}
