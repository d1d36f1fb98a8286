//! Where backup files live: a local directory, or a prefix in an object store (`s3://`, `gs://`,
//! `az://`) through the `object_store` crate.
//!
//! The backup and restore code is synchronous around its files (a job writes through
//! `std::io::Write`, the restore reader is a blocking thread), so object-store I/O runs on a
//! small runtime of its own ([`io_runtime`]) and the calls here block the calling thread until
//! it answers, as a local file write blocks on the kernel. That keeps the two runtimes apart: a
//! job's thread waiting for a part upload never starves the runtime the upload runs on.
//!
//! Object files are written as multipart uploads of [`PART_BYTES`] parts, at most
//! [`PARTS_IN_FLIGHT`] outstanding per file, so no whole file is ever held in memory; a file
//! smaller than one part is one `PUT`. An object appears only when its upload completes (S3,
//! GCS and Azure semantics), which is what the resume state of an object-store backup relies on
//! (`docs/OPERATIONS.md`, "Object-store targets"). Transient failures (connection refused or
//! dropped, 5xx, timeouts) are retried by the crate with exponential backoff for up to
//! `--object-retry-secs`; each retry is logged on stderr (`object_store` target, INFO).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, MultipartUpload, ObjectStore, PutPayload, RetryConfig};

/// Bytes per multipart part (S3 wants at least 5 MiB for every part but the last).
pub const PART_BYTES: usize = 8 << 20;
/// Parts one file keeps uploading at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Chunks a streamed object read keeps buffered ahead of the reader.
const READ_AHEAD_CHUNKS: usize = 16;

/// Object-store settings shared by `backup` and `restore` (flags spelled as asbackup's S3 ones).
#[derive(clap::Args, Debug, Clone)]
pub struct ObjectStoreArgs {
    /// S3: the endpoint URL of an S3-compatible store instead of AWS (`http://` allowed).
    /// Default: `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`.
    #[arg(long)]
    pub s3_endpoint_override: Option<String>,
    /// S3: the region. Default: `AWS_REGION` / `AWS_DEFAULT_REGION`, the profile's region in
    /// `~/.aws/config`, else us-east-1.
    #[arg(long)]
    pub s3_region: Option<String>,
    /// S3: the profile to read from `~/.aws/credentials` and `~/.aws/config` when no
    /// `AWS_ACCESS_KEY_ID` is set. Default: `AWS_PROFILE`, else `default`.
    #[arg(long)]
    pub s3_profile: Option<String>,
    /// Object stores: retry a failed request (with exponential backoff, 100 ms doubling to
    /// 15 s) for at most this many seconds before the backup or restore fails.
    #[arg(long, default_value_t = 180)]
    pub object_retry_secs: u64,
    /// Object stores: a request with no answer within this many seconds fails (and is retried
    /// as above): a store that hangs instead of refusing is an outage too.
    #[arg(long, default_value_t = 30)]
    pub object_timeout_secs: u64,
}

impl Default for ObjectStoreArgs {
    fn default() -> Self {
        ObjectStoreArgs {
            s3_endpoint_override: None,
            s3_region: None,
            s3_profile: None,
            object_retry_secs: 180,
            object_timeout_secs: 30,
        }
    }
}

/// The runtime all object-store requests run on (2 threads, started on first use).
pub fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-io")
            .enable_all()
            .build()
            .expect("start the object-store I/O runtime")
    })
}

/// Runs `fut` on the I/O runtime and blocks this thread until it ends. Safe from any thread,
/// a tokio worker of another runtime included (it parks the thread, not a runtime).
pub fn block<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let handle = io_runtime().spawn(fut);
    match futures::executor::block_on(handle) {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A backup location.
#[derive(Clone)]
pub enum Target {
    Local(PathBuf),
    Object(ObjectTarget),
}

/// A prefix ("directory") in an object store.
#[derive(Clone)]
pub struct ObjectTarget {
    pub store: Arc<dyn ObjectStore>,
    /// The prefix, without a trailing `/` (empty: the bucket's root).
    pub prefix: String,
    /// `scheme://bucket`, for messages.
    pub base: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Local(p) => write!(f, "{}", p.display()),
            Target::Object(o) if o.prefix.is_empty() => write!(f, "{}", o.base),
            Target::Object(o) => write!(f, "{}/{}", o.base, o.prefix),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({self})")
    }
}

/// The `[profile]` section's `key = value` pairs of an AWS shared config or credentials file.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

fn home_file(env: &str, default: &str) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(default)),
    }
}

fn retry_config(secs: u64) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 64,
        retry_timeout: Duration::from_secs(secs),
    }
}

fn timeout_options(opts: &ObjectStoreArgs) -> object_store::ClientOptions {
    object_store::ClientOptions::new().with_timeout(Duration::from_secs(opts.object_timeout_secs.max(1)))
}

fn s3_store(url: &str, opts: &ObjectStoreArgs) -> Result<Arc<dyn ObjectStore>, String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::ClientOptions;
    let mut b = AmazonS3Builder::from_env().with_url(url);
    let profile = opts
        .s3_profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".into());
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(text) = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")
            .and_then(|p| fs::read_to_string(p).ok())
        {
            for (k, v) in ini_section(&text, &profile) {
                match k.as_str() {
                    "aws_access_key_id" => b = b.with_access_key_id(v),
                    "aws_secret_access_key" => b = b.with_secret_access_key(v),
                    "aws_session_token" => b = b.with_token(v),
                    _ => {}
                }
            }
        }
    }
    let env_region = std::env::var_os("AWS_REGION").or_else(|| std::env::var_os("AWS_DEFAULT_REGION"));
    if let Some(r) = &opts.s3_region {
        b = b.with_region(r);
    } else if env_region.is_none() {
        let section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        if let Some(text) = home_file("AWS_CONFIG_FILE", ".aws/config").and_then(|p| fs::read_to_string(p).ok()) {
            if let Some((_, r)) = ini_section(&text, &section).into_iter().find(|(k, _)| k == "region") {
                b = b.with_region(r);
            }
        }
    }
    let endpoint = opts
        .s3_endpoint_override
        .clone()
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
    let mut client = ClientOptions::new().with_timeout(Duration::from_secs(opts.object_timeout_secs.max(1)));
    if let Some(e) = &endpoint {
        b = b.with_endpoint(e);
        if e.starts_with("http://") {
            client = client.with_allow_http(true);
        }
    }
    b.with_client_options(client)
        .with_retry(retry_config(opts.object_retry_secs))
        .build()
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| format!("{url}: {e}"))
}

impl Target {
    /// Parses a backup location: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` (also `abfs://`, `azure://`), `file:///path`, or a local path.
    /// Credentials come from the usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`)
    /// and, for S3, `~/.aws/credentials` and `~/.aws/config`.
    ///
    /// # Errors
    /// An unknown scheme, a URL without a bucket, or settings the crate refuses.
    pub fn parse(s: &str, opts: &ObjectStoreArgs) -> Result<Target, String> {
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(Target::Local(PathBuf::from(s)));
        };
        if scheme == "file" {
            return Ok(Target::Local(PathBuf::from(rest)));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{s}: no bucket"));
        }
        let retry = retry_config(opts.object_retry_secs);
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => s3_store(s, opts)?,
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(s)
                    .with_client_options(timeout_options(opts))
                    .with_retry(retry)
                    .build()
                    .map_err(|e| format!("{s}: {e}"))?,
            ),
            "az" | "abfs" | "abfss" | "azure" | "adl" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(s)
                    .with_client_options(timeout_options(opts))
                    .with_retry(retry)
                    .build()
                    .map_err(|e| format!("{s}: {e}"))?,
            ),
            other => return Err(format!("{s}: unknown scheme {other:?} (s3, gs, az, file, or a path)")),
        };
        Ok(Target::Object(ObjectTarget {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            base: format!("{scheme}://{bucket}"),
        }))
    }

    /// A target over any store (tests use `object_store::memory::InMemory`).
    pub fn object(store: Arc<dyn ObjectStore>, prefix: &str, base: &str) -> Target {
        Target::Object(ObjectTarget {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            base: base.to_string(),
        })
    }

    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Target::Local(p) => Some(p),
            Target::Object(_) => None,
        }
    }

    /// The sub-location `name` (a subdirectory, or the prefix `prefix/name`).
    pub fn child(&self, name: &str) -> Target {
        match self {
            Target::Local(p) => Target::Local(p.join(name)),
            Target::Object(o) => Target::Object(ObjectTarget {
                store: o.store.clone(),
                prefix: o.key(name),
                base: o.base.clone(),
            }),
        }
    }

    /// `name` inside the target, for messages.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Target::Local(p) => p.join(name).display().to_string(),
            Target::Object(_) => format!("{self}/{name}"),
        }
    }

    /// Makes the location exist (a local directory; nothing for an object store).
    pub fn create_dir(&self) -> Result<(), String> {
        match self {
            Target::Local(p) => fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display())),
            Target::Object(_) => Ok(()),
        }
    }

    /// The files directly in the target, (name, bytes), sorted by name. A missing local
    /// directory lists as empty.
    pub fn list(&self) -> Result<Vec<(String, u64)>, String> {
        let mut out = Vec::new();
        match self {
            Target::Local(p) => {
                let rd = match fs::read_dir(p) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(format!("read {}: {e}", p.display())),
                };
                for entry in rd {
                    let entry = entry.map_err(|e| format!("read {}: {e}", p.display()))?;
                    let meta = entry.metadata().map_err(|e| format!("stat {}: {e}", entry.path().display()))?;
                    if meta.is_file() {
                        if let Some(n) = entry.file_name().to_str() {
                            out.push((n.to_string(), meta.len()));
                        }
                    }
                }
            }
            Target::Object(o) => {
                let (store, prefix) = (o.store.clone(), o.dir_path());
                let listed = block(async move { store.list_with_delimiter(prefix.as_ref()).await })
                    .map_err(|e| format!("list {self}: {e}"))?;
                for m in listed.objects {
                    if let Some(n) = m.location.filename() {
                        out.push((n.to_string(), m.size));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The sub-locations (subdirectories, common prefixes) directly in the target, sorted.
    pub fn list_dirs(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        match self {
            Target::Local(p) => {
                let rd = match fs::read_dir(p) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(format!("read {}: {e}", p.display())),
                };
                for entry in rd {
                    let entry = entry.map_err(|e| format!("read {}: {e}", p.display()))?;
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        if let Some(n) = entry.file_name().to_str() {
                            out.push(n.to_string());
                        }
                    }
                }
            }
            Target::Object(o) => {
                let (store, prefix) = (o.store.clone(), o.dir_path());
                let listed = block(async move { store.list_with_delimiter(prefix.as_ref()).await })
                    .map_err(|e| format!("list {self}: {e}"))?;
                for p in listed.common_prefixes {
                    if let Some(n) = p.filename() {
                        out.push(n.to_string());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates file `name` for writing (it must not exist locally; an object is replaced).
    pub fn create(&self, name: &str) -> Result<Sink, String> {
        match self {
            Target::Local(p) => {
                let path = p.join(name);
                let file = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| format!("create {}: {e}", path.display()))?;
                Ok(Sink::Local(BufWriter::with_capacity(1 << 20, file), path))
            }
            Target::Object(o) => Ok(Sink::Object(Box::new(ObjectUpload {
                store: o.store.clone(),
                location: ObjPath::from(o.key(name)),
                name: self.describe(name),
                upload: None,
                buf: Vec::new(),
                inflight: VecDeque::new(),
                bytes: 0,
            }))),
        }
    }

    /// Opens file `name` for a streamed read.
    pub fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, String> {
        match self {
            Target::Local(p) => {
                let path = p.join(name);
                Ok(Box::new(File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?))
            }
            Target::Object(o) => {
                let (store, location) = (o.store.clone(), ObjPath::from(o.key(name)));
                let what = self.describe(name);
                let got = block(async move { store.get(&location).await }).map_err(|e| format!("open {what}: {e}"))?;
                let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
                io_runtime().spawn(async move {
                    let mut stream = got.into_stream();
                    while let Some(chunk) = stream.next().await {
                        let stop = chunk.is_err();
                        if tx.send(chunk).await.is_err() || stop {
                            break;
                        }
                    }
                });
                Ok(Box::new(ObjectReader {
                    rx,
                    cur: Bytes::new(),
                    name: self.describe(name),
                }))
            }
        }
    }

    /// The whole of a small file (state, catalogue); `None` when it does not exist.
    pub fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Target::Local(p) => match fs::read(p.join(name)) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("read {}: {e}", p.join(name).display())),
            },
            Target::Object(o) => {
                let (store, location) = (o.store.clone(), ObjPath::from(o.key(name)));
                let r = block(async move {
                    match store.get(&location).await {
                        Ok(g) => g.bytes().await.map(Some),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                });
                r.map(|b| b.map(|b| b.to_vec()))
                    .map_err(|e| format!("read {}: {e}", self.describe(name)))
            }
        }
    }

    /// Replaces file `name` with `data` atomically (a local temporary file renamed over it; one
    /// object `PUT`).
    pub fn write_small(&self, name: &str, data: &[u8]) -> Result<(), String> {
        match self {
            Target::Local(p) => {
                let path = p.join(name);
                let tmp = p.join(format!("{name}.tmp"));
                fs::write(&tmp, data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
                fs::rename(&tmp, &path)
                    .map_err(|e| format!("rename {} to {}: {e}", tmp.display(), path.display()))
            }
            Target::Object(o) => {
                let (store, location) = (o.store.clone(), ObjPath::from(o.key(name)));
                let payload = PutPayload::from(Bytes::copy_from_slice(data));
                block(async move { store.put(&location, payload).await })
                    .map(|_| ())
                    .map_err(|e| format!("write {}: {e}", self.describe(name)))
            }
        }
    }

    /// Removes file `name` (absent is fine).
    pub fn remove(&self, name: &str) -> Result<(), String> {
        match self {
            Target::Local(p) => match fs::remove_file(p.join(name)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("remove {}: {e}", p.join(name).display())),
            },
            Target::Object(o) => {
                let (store, location) = (o.store.clone(), ObjPath::from(o.key(name)));
                block(async move {
                    match store.delete(&location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .map_err(|e| format!("remove {}: {e}", self.describe(name)))
            }
        }
    }

    /// Removes the target and everything in it (a local directory tree; every object under the
    /// prefix).
    pub fn remove_all(&self) -> Result<(), String> {
        match self {
            Target::Local(p) => match fs::remove_dir_all(p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("remove {}: {e}", p.display())),
            },
            Target::Object(o) => {
                let (store, prefix) = (o.store.clone(), o.dir_path());
                block(async move {
                    let mut listed = store.list(prefix.as_ref());
                    let mut locations = Vec::new();
                    while let Some(m) = listed.next().await {
                        locations.push(m?.location);
                    }
                    for l in locations {
                        match store.delete(&l).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .map_err(|e| format!("remove {self}: {e}"))
            }
        }
    }
}

impl ObjectTarget {
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    fn dir_path(&self) -> Option<ObjPath> {
        (!self.prefix.is_empty()).then(|| ObjPath::from(self.prefix.as_str()))
    }
}

/// A file being written: a buffered local file, or a streamed object upload.
pub enum Sink {
    Local(BufWriter<File>, PathBuf),
    Object(Box<ObjectUpload>),
}

impl Sink {
    /// Whether a flush makes the bytes so far durable enough to checkpoint (a local file: in
    /// the OS; an object: not until [`Sink::close`]).
    pub fn checkpoints_on_flush(&self) -> bool {
        matches!(self, Sink::Local(..))
    }

    /// Ends the file: a local file flushed and synced; an object's upload completed. Returns
    /// the bytes written.
    ///
    /// # Errors
    /// The write, sync or upload failed (the object then does not exist).
    pub fn close(self) -> io::Result<u64> {
        match self {
            Sink::Local(w, path) => {
                let file = w.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                file.metadata().map(|m| m.len()).map_err(|e| {
                    io::Error::new(e.kind(), format!("stat {}: {e}", path.display()))
                })
            }
            Sink::Object(u) => (*u).complete(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Local(w, _) => w.write(buf),
            Sink::Object(u) => u.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Local(w, _) => w.flush(),
            // Parts go out when full; a flush has nothing durable to offer before completion.
            Sink::Object(_) => Ok(()),
        }
    }
}

type PartHandle = tokio::task::JoinHandle<object_store::Result<object_store::PutResult>>;

/// A streamed multipart upload (see the module docs).
pub struct ObjectUpload {
    store: Arc<dyn ObjectStore>,
    location: ObjPath,
    name: String,
    upload: Option<Box<dyn MultipartUpload>>,
    buf: Vec<u8>,
    inflight: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
    bytes: u64,
}

fn obj_err(name: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{name}: {e}"))
}

impl ObjectUpload {
    fn send_part(&mut self) -> io::Result<()> {
        if self.upload.is_none() {
            let (store, location) = (self.store.clone(), self.location.clone());
            let up = block(async move { store.put_multipart(&location).await }).map_err(|e| obj_err(&self.name, e))?;
            self.upload = Some(up);
        }
        let part = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PART_BYTES)));
        let fut = self.upload.as_mut().expect("started above").put_part(PutPayload::from(part));
        self.inflight.push_back(io_runtime().spawn(fut));
        while self.inflight.len() > PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        let Some(h) = self.inflight.pop_front() else { return Ok(()) };
        match futures::executor::block_on(h) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(obj_err(&self.name, format!("part upload: {e}"))),
            Err(e) => Err(obj_err(&self.name, format!("part upload task: {e}"))),
        }
    }

    fn complete(mut self) -> io::Result<u64> {
        let result = self.finish_upload();
        if result.is_err() {
            self.abort();
        }
        result
    }

    fn finish_upload(&mut self) -> io::Result<u64> {
        if self.upload.is_none() {
            // Smaller than one part: a single PUT.
            let (store, location) = (self.store.clone(), self.location.clone());
            let payload = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
            let r: object_store::Result<object_store::PutResult> =
                block(async move { store.put(&location, payload).await });
            r.map_err(|e| obj_err(&self.name, e))?;
            return Ok(self.bytes);
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        while !self.inflight.is_empty() {
            self.wait_oldest()?;
        }
        let mut up = self.upload.take().expect("checked above");
        let done: PartHandle = io_runtime().spawn(async move { up.complete().await });
        match futures::executor::block_on(done) {
            Ok(Ok(_)) => Ok(self.bytes),
            Ok(Err(e)) => Err(obj_err(&self.name, format!("complete upload: {e}"))),
            Err(e) => Err(obj_err(&self.name, format!("complete upload task: {e}"))),
        }
    }

    /// Abandons the upload (best effort: the store drops the parts; a killed process leaves
    /// them to the bucket's lifecycle rule for incomplete uploads).
    fn abort(&mut self) {
        for h in self.inflight.drain(..) {
            h.abort();
        }
        if let Some(mut up) = self.upload.take() {
            let _ = block(async move { up.abort().await });
        }
    }
}

impl Write for ObjectUpload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PART_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.bytes += n as u64;
        if self.buf.len() == PART_BYTES {
            if let Err(e) = self.send_part() {
                self.abort();
                return Err(e);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectUpload {
    fn drop(&mut self) {
        // Dropped without close (an error elsewhere): nothing becomes visible.
        if self.upload.is_some() || !self.inflight.is_empty() {
            self.abort();
        }
    }
}

/// A streamed object read: chunks fetched ahead by the I/O runtime.
struct ObjectReader {
    rx: tokio::sync::mpsc::Receiver<object_store::Result<Bytes>>,
    cur: Bytes,
    name: String,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match futures::executor::block_on(self.rx.recv()) {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(obj_err(&self.name, format!("read: {e}"))),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Target {
        Target::object(Arc::new(object_store::memory::InMemory::new()), "backups/run", "memory://m")
    }

    #[test]
    fn multipart_round_trip_and_listing() {
        let t = memory();
        // 2.5 parts: two full parts and a last short one.
        let data: Vec<u8> = (0..PART_BYTES * 5 / 2).map(|i| (i * 7 % 251) as u8).collect();
        let mut sink = t.create("big.asb").unwrap();
        for chunk in data.chunks(100_003) {
            sink.write_all(chunk).unwrap();
        }
        assert!(t.list().unwrap().is_empty(), "nothing visible before completion");
        assert_eq!(sink.close().unwrap(), data.len() as u64);
        let mut small = t.create("small.asb").unwrap();
        small.write_all(b"hello").unwrap();
        small.close().unwrap();
        assert_eq!(
            t.list().unwrap(),
            vec![("big.asb".to_string(), data.len() as u64), ("small.asb".to_string(), 5)]
        );
        let mut back = Vec::new();
        t.open("big.asb").unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data);
        t.write_small("state", b"x y").unwrap();
        assert_eq!(t.read_small("state").unwrap().as_deref(), Some(&b"x y"[..]));
        assert_eq!(t.read_small("none").unwrap(), None);
        t.remove("state").unwrap();
        t.remove("state").unwrap();
        let parent = Target::object(
            match &t {
                Target::Object(o) => o.store.clone(),
                Target::Local(_) => unreachable!(),
            },
            "backups",
            "memory://m",
        );
        assert_eq!(parent.list_dirs().unwrap(), vec!["run".to_string()]);
        assert_eq!(parent.child("run").list().unwrap().len(), 2);
        parent.remove_all().unwrap();
        assert!(t.list().unwrap().is_empty());
    }

    #[test]
    fn parse_locations() {
        let o = ObjectStoreArgs::default();
        assert!(matches!(Target::parse("/tmp/x", &o).unwrap(), Target::Local(_)));
        assert!(matches!(Target::parse("file:///tmp/x", &o).unwrap(), Target::Local(p) if p == Path::new("/tmp/x")));
        assert!(Target::parse("ftp://x/y", &o).is_err());
        assert!(Target::parse("s3:///y", &o).is_err());
        let t = Target::parse("s3://bucket/a/b/", &o).unwrap();
        assert_eq!(t.to_string(), "s3://bucket/a/b");
    }

    #[test]
    fn aws_ini_sections() {
        let text = "[default]\naws_access_key_id = A\n# c\n[profile x]\nregion=eu-west-1\n[x]\naws_access_key_id=B\n";
        assert_eq!(ini_section(text, "default"), vec![("aws_access_key_id".into(), "A".into())]);
        assert_eq!(ini_section(text, "profile x"), vec![("region".into(), "eu-west-1".into())]);
        assert_eq!(ini_section(text, "x"), vec![("aws_access_key_id".into(), "B".into())]);
    }
}
