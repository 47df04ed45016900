//! The deploy files parse, fit together, and point kube-scheduler at the verbs this service serves.

mod common;

use std::path::{Path, PathBuf};

use conrdma_placement::Config;
use serde::Deserialize;
use serde_yaml::Value;

fn docs(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

struct Deployed {
    service_host: String,
    service_port: u64,
    listen_port: u64,
}

fn check_placement_yaml() -> Deployed {
    let d = docs("placement.yaml");
    let ns = s(&kind(&d, "Namespace")["metadata"]["name"]).to_string();
    let deploy = kind(&d, "Deployment");
    let svc = kind(&d, "Service");
    let cm = kind(&d, "ConfigMap");
    for obj in [deploy, svc, cm] {
        assert_eq!(s(&obj["metadata"]["namespace"]), ns);
    }
    assert_eq!(
        deploy["spec"]["replicas"], 1,
        "the picture is in memory: one replica"
    );
    let pod = &deploy["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_mapping().unwrap();
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(labels.get(k), Some(v), "Service selector matches the pod");
    }
    let ctr = &pod["spec"]["containers"][0];
    let args: Vec<&str> = ctr["args"].as_sequence().unwrap().iter().map(s).collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name} missing from {args:?}"))
            .to_string()
    };
    let listen: std::net::SocketAddr = flag("listen").parse().unwrap();
    let config_path = PathBuf::from(flag("config"));

    // Service port -> named container port -> --listen.
    let port = &svc["spec"]["ports"][0];
    let target = s(&port["targetPort"]);
    let cport = ctr["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == target)
        .expect("targetPort names a container port");
    assert_eq!(cport["containerPort"].as_u64(), Some(listen.port() as u64));

    // Volumes: where each mounted file comes from.
    let mounts = ctr["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let source_of = |file: &Path| -> Value {
        let m = mounts
            .iter()
            .find(|m| file.starts_with(s(&m["mountPath"])))
            .unwrap_or_else(|| panic!("{} is not under any volumeMount", file.display()));
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", m["name"]))
            .clone()
    };
    let cm_name = s(&source_of(&config_path)["configMap"]["name"]).to_string();
    assert_eq!(s(&cm["metadata"]["name"]), cm_name);
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let toml = s(&cm["data"][key]);
    let cfg = Config::from_toml(toml, "deploy ConfigMap", Path::new("/")).unwrap();
    assert!(source_of(&cfg.tokens_file)["secret"]["secretName"].is_string());
    let tls = cfg.tls.as_ref().expect("deployed with TLS");
    assert!(source_of(&tls.cert)["secret"]["secretName"].is_string());
    assert!(source_of(&tls.key)["secret"]["secretName"].is_string());
    assert_eq!(ctr["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(ctr["readinessProbe"]["httpGet"]["scheme"], "HTTPS");

    Deployed {
        service_host: format!("{}.{ns}.svc", s(&svc["metadata"]["name"])),
        service_port: port["port"].as_u64().unwrap(),
        listen_port: listen.port() as u64,
    }
}

#[test]
fn deployment_service_and_config_fit_together() {
    let d = check_placement_yaml();
    assert_eq!(d.listen_port, 8443);
}

#[tokio::test]
async fn scheduler_extender_points_at_the_service_and_our_verbs() {
    let dep = check_placement_yaml();
    let d = docs("scheduler-config.yaml");
    let sc = kind(&d, "KubeSchedulerConfiguration");
    assert_eq!(sc["apiVersion"], "kubescheduler.config.k8s.io/v1");
    let ext = sc["extenders"].as_sequence().unwrap();
    assert_eq!(ext.len(), 1);
    let e = &ext[0];
    let url = s(&e["urlPrefix"]);
    let rest = url
        .strip_prefix("https://")
        .expect("https, since the webhook serves TLS");
    assert_eq!(e["enableHTTPS"], true);
    assert_eq!(rest, format!("{}:{}", dep.service_host, dep.service_port));
    assert_eq!(s(&e["tlsConfig"]["serverName"]), dep.service_host);
    assert_eq!(e["nodeCacheCapable"], true);
    assert!(e["weight"].as_u64().unwrap() >= 1);
    assert!(e["bindVerb"].is_null() && e["preemptVerb"].is_null());
    // Only keys the upstream Extender type has.
    let known = [
        "urlPrefix",
        "filterVerb",
        "preemptVerb",
        "prioritizeVerb",
        "weight",
        "bindVerb",
        "enableHTTPS",
        "tlsConfig",
        "httpTimeout",
        "nodeCacheCapable",
        "managedResources",
        "ignorable",
    ];
    for k in e.as_mapping().unwrap().keys() {
        assert!(known.contains(&s(k)), "unknown extender key {k:?}");
    }

    // kube-scheduler calls urlPrefix + "/" + verb: those paths answer here.
    let server = common::start(|_, _| {}).await;
    let args = common::fixture("extender-args-node-names.json").to_string();
    for verb in ["filterVerb", "prioritizeVerb"] {
        let path = format!("/{}", s(&e[verb]));
        let r = common::call(server.addr, "POST", &path, None, &args).await;
        assert_eq!(r.status, 200, "{verb} -> {path}: {}", r.body);
    }
    server.running.stop().await.unwrap();
}
