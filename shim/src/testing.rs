//! Test fixtures shared by the shim's unit tests: an allocation record, a proxy over a fake runc
//! shim on a simulated NIC, and an HTTPS webhook stand-in behind a private CA.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conrdma_api::report::UsageBatch;
use conrdma_api::AllocationRecord;
use conrdma_node::limiter::RateLimiter;
use conrdma_node::simulate::{build, SimOptions};
use containerd_shim_protos::api::{ConnectResponse, CreateTaskRequest};
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};
use ttrpc::proto::{RequestInit, ResponseInit};
use ttrpc::{Code, Request, Response};

use crate::service::{Proxy, Upstream, SERVICE_V2, SERVICE_V3};
use crate::settings::Settings;

/// The allocation of VF `vf` of `ens1f0`: 1 Gbps guaranteed, 4 Gbps limit.
pub fn record(vf: u32) -> AllocationRecord {
    AllocationRecord {
        pool: "default".into(),
        pf: "ens1f0".into(),
        vf,
        vf_pci: "0000:3b:00.3".into(),
        rdma_device: format!("mlx5_{vf}"),
        netdev: format!("ens1f0v{vf}"),
        guaranteed_mbps: 1_000,
        limit_mbps: 4_000,
        uverbs: format!("/dev/infiniband/uverbs{vf}"),
        rdma_cgroup: Default::default(),
        start_max_mbps: None,
        address: None,
        ifname: None,
    }
}

/// The annotations of CRI sandbox `sb` of pod default/p (uid u), which asks for 1G.
pub fn sandbox() -> serde_json::Value {
    serde_json::json!({
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "sb",
        "io.kubernetes.cri.sandbox-name": "p",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "u",
        "rdma.conrdma.io/bandwidth": "1G",
    })
}

/// The annotations of container `name` of sandbox `sb`, with the allocation (JSON) if given.
pub fn container(name: &str, allocation: Option<String>) -> serde_json::Value {
    let mut a = serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "sb",
        "io.kubernetes.cri.container-name": name,
        "rdma.conrdma.io/bandwidth": "1G",
    });
    if let Some(j) = allocation {
        a["rdma.conrdma.io/allocation"] = j.into();
    }
    a
}

/// Records forwarded calls; answers OK (Connect with a runc-like ConnectResponse).
#[derive(Default)]
pub struct Fake {
    pub calls: Mutex<Vec<(String, Vec<u8>)>>,
    pub services: Mutex<Vec<String>>,
}

impl Upstream for Arc<Fake> {
    fn call(&self, req: Request) -> ttrpc::Result<Response> {
        self.calls
            .lock()
            .unwrap()
            .push((req.method.clone(), req.payload.clone()));
        self.services.lock().unwrap().push(req.service.clone());
        let mut res = Response::init_status(ttrpc::get_status(Code::OK, ""));
        if req.method == "Connect" {
            let mut c = ConnectResponse::new();
            c.shim_pid = 1;
            c.task_pid = 42;
            res.payload = c.write_to_bytes().unwrap();
        }
        Ok(res)
    }
}

pub fn request(method: &str, msg: &dyn protobuf::MessageDyn) -> Request {
    let mut r = Request::init_request(SERVICE_V2.into(), method.into(), 0, vec![]);
    r.payload = msg.write_to_bytes_dyn().unwrap();
    r
}

pub fn ok(r: &Response) -> bool {
    r.status.as_ref().is_none_or(|s| s.code() == Code::OK)
}

/// A proxy (child serving v3) over a fake runc shim, on a simulated 1-PF, 2-VF NIC.
pub struct World {
    pub dir: tempfile::TempDir,
    pub nic: PathBuf,
    pub bundles: PathBuf,
    pub fake: Arc<Fake>,
    pub proxy: Proxy,
}

impl World {
    /// `options`: more of the runtime's options table, after the simulated limiter's.
    pub fn new(options: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let nic = dir.path().join("nic");
        build(
            &nic,
            &SimOptions {
                pfs: 1,
                vfs_per_pf: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let bundles = dir.path().join("k8s.io");
        let settings = Settings::from_toml(&format!(
            "limiter = \"simulated\"\nsysfs_root = {:?}\n{options}",
            nic.to_string_lossy()
        ))
        .unwrap();
        let limiter: Arc<dyn RateLimiter> = Arc::from(settings.limiter.build());
        let fake = Arc::new(Fake::default());
        let proxy = Proxy::new(Box::new(fake.clone()), SERVICE_V3, settings, limiter);
        World {
            dir,
            nic,
            bundles,
            fake,
            proxy,
        }
    }

    /// Writes the bundle of task `id` with these annotations; returns its path.
    pub fn bundle(&self, id: &str, annotations: serde_json::Value) -> String {
        let b = self.bundles.join(id);
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            b.join("config.json"),
            serde_json::json!({ "ociVersion": "1.0.2", "annotations": annotations }).to_string(),
        )
        .unwrap();
        b.to_string_lossy().into_owned()
    }

    pub fn create(&self, id: &str, bundle: String, options: Option<Any>) -> Response {
        let mut m = CreateTaskRequest::new();
        m.id = id.into();
        m.bundle = bundle;
        m.options = MessageField::from_option(options);
        self.proxy.handle("Create", request("Create", &m))
    }
}

/// An HTTPS webhook stand-in whose certificate a private CA signed: records every request's path
/// and usage batch, answers 202.
pub struct HttpsWebhook {
    pub url: String,
    /// The private CA's PEM.
    pub ca_file: PathBuf,
    got: Arc<Mutex<Vec<(String, UsageBatch)>>>,
    _dir: tempfile::TempDir,
}

impl HttpsWebhook {
    pub fn start() -> HttpsWebhook {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "conrdma test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        // Serves until the test process ends; a failed handshake just drops that connection.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                if let Some(req) = read_request(&mut tls) {
                    g.lock().unwrap().push(req);
                    let _ = tls.write_all(
                        b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        HttpsWebhook {
            url,
            ca_file,
            got,
            _dir: dir,
        }
    }

    /// (path, batch) of every request so far.
    pub fn received(&self) -> Vec<(String, UsageBatch)> {
        self.got.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request: its path and JSON body (None when the connection failed first).
fn read_request(stream: &mut impl Read) -> Option<(String, UsageBatch)> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
        if h.trim().is_empty() {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((path, serde_json::from_slice(&body).ok()?))
}
