//! `conrdma-rdma-probe`: proves an RDMA device is usable from where it runs (a pod, or the host).
//!
//! Opens the device through libibverbs (`ibv_open_device`, i.e. its uverbs char device), queries the
//! device and a port, optionally opens more contexts and allocates protection domains (each context
//! is one rdma cgroup `hca_handle`, each PD one `hca_object`), optionally holds them for a while so a
//! test can read `rdma.current`, and prints exactly one JSON line on stdout:
//!
//! ```text
//! {"active_mtu":1024,...,"contexts_opened":1,"device":"rxe0",...,"link_layer":"Ethernet",
//!  "ok":true,...,"port":1,"port_state":"ACTIVE","probe":"conrdma-rdma-probe","uverbs":"uverbs0"}
//! ```
//! (keys in alphabetical order).
//!
//! `ok` is true when everything asked for succeeded; then the exit code is 0, else 1 (2 for bad
//! arguments or a build without the `verbs` feature). A failure names its `stage` and `errno`.
//!
//! ```text
//! conrdma-rdma-probe [--device NAME] [--port N] [--contexts N] [--pds N] [--hold SECONDS] [--list]
//! ```
//! `--device` defaults to `$CONRDMA_RDMA_DEVICE` (which the ConRDMA NRI plugin sets in the pod), else
//! the first device. `--list` only lists the devices libibverbs sees.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
struct Args {
    device: Option<String>,
    port: u8,
    contexts: u32,
    pds: u32,
    hold_secs: u64,
    list: bool,
}

fn parse_args(argv: &[String], env_device: Option<String>) -> Result<Args, String> {
    let mut a = Args {
        device: env_device.filter(|d| !d.is_empty()),
        port: 1,
        contexts: 1,
        pds: 0,
        hold_secs: 0,
        list: false,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--device" => a.device = Some(value("--device")?),
            "--port" => a.port = num(&value("--port")?, "--port")?,
            "--contexts" => a.contexts = num(&value("--contexts")?, "--contexts")?,
            "--pds" => a.pds = num(&value("--pds")?, "--pds")?,
            "--hold" => a.hold_secs = num(&value("--hold")?, "--hold")?,
            "--list" => a.list = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    if a.port == 0 {
        return Err("--port counts from 1".into());
    }
    if a.contexts == 0 && !a.list {
        return Err("--contexts must be at least 1".into());
    }
    Ok(a)
}

const USAGE: &str = "usage: conrdma-rdma-probe [--device NAME] [--port N] [--contexts N] [--pds N] [--hold SECONDS] [--list]";

fn num<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag} wants a whole number, got {s:?}"))
}

/// The one output line (a JSON object; serde_json keeps its keys sorted).
struct Report(Map<String, Value>);

impl Report {
    fn new() -> Self {
        let mut m = Map::new();
        m.insert("probe".into(), json!("conrdma-rdma-probe"));
        Report(m)
    }
    fn set(&mut self, k: &str, v: Value) {
        self.0.insert(k.into(), v);
    }
    /// Records the first failure (stage, errno, message); later ones do not overwrite it.
    #[cfg_attr(not(feature = "verbs"), allow(dead_code))]
    #[cfg_attr(not(feature = "verbs"), allow(dead_code))]
    fn fail(&mut self, stage: &str, err: &std::io::Error) {
        if self.0.contains_key("stage") {
            return;
        }
        self.set("stage", json!(stage));
        self.set("errno", json!(err.raw_os_error().unwrap_or(0)));
        self.set("error", json!(err.to_string()));
    }
    fn print_and_exit(mut self, ok: bool) -> ! {
        self.set("ok", json!(ok));
        println!("{}", Value::Object(self.0));
        std::process::exit(if ok { 0 } else { 1 });
    }
}

// Used by the libibverbs path, which builds only with the `verbs` feature (and by the tests).
#[cfg_attr(not(feature = "verbs"), allow(dead_code))]
fn port_state_name(s: u32) -> &'static str {
    match s {
        0 => "NOP",
        1 => "DOWN",
        2 => "INIT",
        3 => "ARMED",
        4 => "ACTIVE",
        5 => "ACTIVE_DEFER",
        _ => "UNKNOWN",
    }
}

// Used by the libibverbs path, which builds only with the `verbs` feature (and by the tests).
#[cfg_attr(not(feature = "verbs"), allow(dead_code))]
fn link_layer_name(l: u8) -> &'static str {
    match l {
        1 => "InfiniBand",
        2 => "Ethernet",
        _ => "Unspecified",
    }
}

/// `enum ibv_mtu` (1 = 256 ... 5 = 4096) in bytes.
// Used by the libibverbs path, which builds only with the `verbs` feature (and by the tests).
#[cfg_attr(not(feature = "verbs"), allow(dead_code))]
fn mtu_bytes(m: u32) -> u32 {
    if (1..=5).contains(&m) {
        128 << m
    } else {
        0
    }
}

/// A GUID as ibv_devinfo prints it: four groups of four hex digits.
// Used by the libibverbs path, which builds only with the `verbs` feature (and by the tests).
#[cfg_attr(not(feature = "verbs"), allow(dead_code))]
fn guid_string(host_order: u64) -> String {
    let h = format!("{host_order:016x}");
    format!("{}:{}:{}:{}", &h[0..4], &h[4..8], &h[8..12], &h[12..16])
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv, std::env::var("CONRDMA_RDMA_DEVICE").ok()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("conrdma-rdma-probe: {e}");
            std::process::exit(2);
        }
    };
    let mut report = Report::new();
    let ok = verbs::run(&args, &mut report);
    report.print_and_exit(ok);
}

#[cfg(not(feature = "verbs"))]
mod verbs {
    use super::*;

    pub fn run(_args: &Args, report: &mut Report) -> bool {
        report.set("stage", json!("build"));
        report.set(
            "error",
            json!("built without libibverbs: cargo build -p conrdma-rdma-probe --features verbs"),
        );
        report.set("ok", json!(false));
        println!("{}", Value::Object(report.0.clone()));
        std::process::exit(2);
    }
}

#[cfg(feature = "verbs")]
mod verbs {
    use super::*;
    use rdma_sys::*;
    use std::ffi::CStr;
    use std::io::Error;
    use std::os::raw::c_int;

    /// Owns what was opened and releases it in reverse order.
    struct Opened {
        list: *mut *mut ibv_device,
        contexts: Vec<*mut ibv_context>,
        pds: Vec<*mut ibv_pd>,
    }

    impl Drop for Opened {
        fn drop(&mut self) {
            // SAFETY: every pointer came from the matching libibverbs allocation and is freed once.
            unsafe {
                for pd in self.pds.drain(..).rev() {
                    ibv_dealloc_pd(pd);
                }
                for ctx in self.contexts.drain(..).rev() {
                    ibv_close_device(ctx);
                }
                if !self.list.is_null() {
                    ibv_free_device_list(self.list);
                }
            }
        }
    }

    fn cstr(p: *const std::os::raw::c_char) -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: libibverbs returns NUL-terminated strings that live as long as the device list.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    pub fn run(args: &Args, report: &mut Report) -> bool {
        let mut opened = Opened {
            list: std::ptr::null_mut(),
            contexts: Vec::new(),
            pds: Vec::new(),
        };
        let mut n: c_int = 0;
        // SAFETY: plain FFI call; the list is freed by `Opened`.
        opened.list = unsafe { ibv_get_device_list(&mut n) };
        if opened.list.is_null() {
            report.fail("get_device_list", &Error::last_os_error());
            return false;
        }
        let devices: Vec<*mut ibv_device> = (0..n.max(0) as usize)
            // SAFETY: the list holds `n` valid entries.
            .map(|i| unsafe { *opened.list.add(i) })
            .collect();
        let names: Vec<String> = devices
            .iter()
            // SAFETY: valid device pointers from the list.
            .map(|d| cstr(unsafe { ibv_get_device_name(*d) }))
            .collect();
        report.set("devices", json!(names));
        if args.list {
            return true;
        }
        let idx = match &args.device {
            Some(want) => names.iter().position(|n| n == want),
            None => (!names.is_empty()).then_some(0),
        };
        let Some(idx) = idx else {
            report.set("device", json!(args.device));
            report.fail(
                "find_device",
                &Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no RDMA device {:?} among {names:?}",
                        args.device.as_deref().unwrap_or("(any)")
                    ),
                ),
            );
            return false;
        };
        let dev = devices[idx];
        report.set("device", json!(names[idx]));
        // SAFETY: `dev` is a valid device; dev_name is a fixed-size C string inside it.
        let (uverbs, ibdev_path) = unsafe {
            (
                cstr((*dev).dev_name.as_ptr()),
                cstr((*dev).ibdev_path.as_ptr()),
            )
        };
        report.set("uverbs", json!(uverbs));
        report.set("ibdev_path", json!(ibdev_path));
        // SAFETY: valid device.
        let guid = u64::from_be(unsafe { ibv_get_device_guid(dev) });
        report.set("node_guid", json!(guid_string(guid)));

        let mut all_ok = true;
        for _ in 0..args.contexts {
            // SAFETY: valid device; a NULL result sets errno.
            let ctx = unsafe { ibv_open_device(dev) };
            if ctx.is_null() {
                report.fail("open_device", &Error::last_os_error());
                all_ok = false;
                break;
            }
            opened.contexts.push(ctx);
        }
        report.set("contexts_wanted", json!(args.contexts));
        report.set("contexts_opened", json!(opened.contexts.len()));
        let Some(&ctx) = opened.contexts.first() else {
            return false;
        };

        // SAFETY: zeroed C structs are valid out-parameters for the query calls.
        let mut dattr: ibv_device_attr = unsafe { std::mem::zeroed() };
        let rc = unsafe { ibv_query_device(ctx, &mut dattr) };
        if rc != 0 {
            report.fail("query_device", &Error::from_raw_os_error(rc));
            return false;
        }
        report.set("fw_ver", json!(cstr(dattr.fw_ver.as_ptr())));
        report.set("phys_port_cnt", json!(dattr.phys_port_cnt));
        report.set("max_qp", json!(dattr.max_qp));
        report.set("max_pd", json!(dattr.max_pd));

        let mut pattr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid context, port number checked by the kernel.
        let rc = unsafe { ___ibv_query_port(ctx, args.port, &mut pattr) };
        report.set("port", json!(args.port));
        if rc != 0 {
            report.fail("query_port", &Error::from_raw_os_error(rc));
            return false;
        }
        report.set("port_state", json!(port_state_name(pattr.state as u32)));
        report.set("link_layer", json!(link_layer_name(pattr.link_layer)));
        report.set("active_mtu", json!(mtu_bytes(pattr.active_mtu as u32)));
        report.set("max_mtu", json!(mtu_bytes(pattr.max_mtu as u32)));
        report.set("gid_tbl_len", json!(pattr.gid_tbl_len));
        report.set("active_speed", json!(pattr.active_speed));
        report.set("active_width", json!(pattr.active_width));

        for _ in 0..args.pds {
            // SAFETY: valid context; NULL sets errno.
            let pd = unsafe { ibv_alloc_pd(ctx) };
            if pd.is_null() {
                report.fail("alloc_pd", &Error::last_os_error());
                all_ok = false;
                break;
            }
            opened.pds.push(pd);
        }
        report.set("pds_wanted", json!(args.pds));
        report.set("pds_allocated", json!(opened.pds.len()));

        if args.hold_secs > 0 {
            // Say so on stderr first: a test reading rdma.current waits for this line.
            eprintln!(
                "conrdma-rdma-probe: holding {} context(s) and {} PD(s) for {}s",
                opened.contexts.len(),
                opened.pds.len(),
                args.hold_secs
            );
            std::thread::sleep(std::time::Duration::from_secs(args.hold_secs));
        }
        all_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn device_comes_from_the_flag_then_the_pod_env() {
        let a = parse_args(&argv(&[]), Some("rxe2".into())).unwrap();
        assert_eq!(
            (a.device.as_deref(), a.port, a.contexts, a.pds),
            (Some("rxe2"), 1, 1, 0)
        );
        let a = parse_args(
            &argv(&["--device", "mlx5_3", "--contexts", "2", "--pds", "3"]),
            Some("rxe2".into()),
        )
        .unwrap();
        assert_eq!(
            (a.device.as_deref(), a.contexts, a.pds),
            (Some("mlx5_3"), 2, 3)
        );
        assert_eq!(
            parse_args(&argv(&[]), Some(String::new())).unwrap().device,
            None
        );
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        assert!(parse_args(&argv(&["--port", "0"]), None)
            .unwrap_err()
            .contains("--port"));
        assert!(parse_args(&argv(&["--contexts", "x"]), None)
            .unwrap_err()
            .contains("whole number"));
        assert!(parse_args(&argv(&["--device"]), None)
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_args(&argv(&["--frobnicate"]), None)
            .unwrap_err()
            .contains("unknown argument"));
    }

    #[test]
    fn formats_match_ibv_devinfo() {
        assert_eq!(guid_string(0x982963fffe1ca22d), "9829:63ff:fe1c:a22d");
        assert_eq!((mtu_bytes(3), mtu_bytes(5), mtu_bytes(9)), (1024, 4096, 0));
        assert_eq!(
            (port_state_name(4), link_layer_name(2)),
            ("ACTIVE", "Ethernet")
        );
    }
}
