//! The shim's `start` stdin and runtime options: `StartInput::parse` (bootstrap message or a
//! runtime options `Any`), the options it carries, `options::settings_text`,
//! `Settings::from_toml`, `options::for_runc` and the reply `start` prints. The same bytes are also
//! fed straight to `RuntimeOptions::decode` and (as text) to `Settings::from_toml`.
//!
//! `settings_text` reads the file an options message names when it has no inline body; that read
//! is skipped here (the fuzzer must not read arbitrary files, e.g. /dev/zero).

use conrdma_shim::bootstrap::StartInput;
use conrdma_shim::options::{self, RuntimeOptions};
use conrdma_shim::settings::Settings;

const ID: &str = "fuzz-ctr";
const NS: &str = "k8s.io";

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // RuntimeOptions: decode, and an encode of what was decoded decodes the same.
        if let Ok(o) = RuntimeOptions::decode(data) {
            let again = RuntimeOptions::decode(&o.encode()).expect("decoding an encoded options");
            assert_eq!(again, o);
        }
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = Settings::from_toml(text);
        }
        let Ok(input) = StartInput::parse(data, ID, NS) else {
            return;
        };
        for api in [None, Some(2), Some(3)] {
            let _ = input.reply("unix:///run/containerd/s/fuzz", api);
        }
        let any = input.options();
        let reads_file = any.as_ref().is_some_and(|a| {
            options::is_options_type(&a.type_url)
                && RuntimeOptions::decode(&a.value)
                    .is_ok_and(|o| o.config_body.is_empty() && !o.config_path.is_empty())
        });
        if reads_file {
            return;
        }
        let Ok(text) = options::settings_text(any.as_ref()) else {
            return;
        };
        if let Ok(s) = Settings::from_toml(&text) {
            let _ = options::for_runc(any.as_ref(), &s);
        }
    });
}
