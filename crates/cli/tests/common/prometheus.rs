//! The `prometheus_client` Python package's OpenMetrics parser, for the tests that check
//! dprobe's `--metrics` files with it.

use std::process::Command;

/// What `script` prints, run by a Python that has the `prometheus_client` package (Debian's
/// `python3-prometheus-client`, or pip's `prometheus-client`) with `text` as its input; `None`
/// where none has it. The script must succeed.
pub fn python_with_prometheus_client(script: &str, text: &str) -> Option<String> {
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        let has = Command::new(python).args(["-c", "import prometheus_client"]).output();
        has.is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        println!("prometheus_client not installed (apt python3-prometheus-client or pip prometheus-client): the metrics were checked in Rust only");
        return None;
    };
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "prometheus_client refused it: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    println!("prometheus_client ({python}) parsed the metrics");
    Some(String::from_utf8(o.stdout).unwrap())
}
