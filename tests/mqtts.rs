//! The MQTT link over TLS: mosquitto with a TLS listener that requires a client certificate,
//! a CA, server and client certificates made by the test with openssl. The daemon must verify
//! the broker against the configured CA, present its certificate, and answer services; the
//! cloud side talks to the same broker on a plain loopback listener.

mod peers;

use peers::mqtt::CloudClient;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl {args:?} failed");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=dockcast test CA",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
    }
}

#[test]
fn mqtts_with_ca_and_client_certificate() {
    let _serial = peers::exclusive();
    let dir = peers::TestDir::new("mqtts");
    let d = dir.path();
    make_pki(d);
    let (plain, tls) = (peers::free_port(), peers::free_port());
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nuser root\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n",
        d = d.display()
    );
    std::fs::write(d.join("mosquitto.conf"), conf).expect("conf");
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(d.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("mosquitto.log")).expect("log"))
        .spawn()
        .expect("mosquitto (scripts/setup-deps.sh installs it)");
    assert!(
        peers::wait_until(Duration::from_secs(10), || peers::port_accepts(tls)),
        "mosquitto TLS listener did not come up"
    );

    let run = |client_cert: bool| {
        let mut config = format!(
            "[gateway]\nsn = \"TLSDOCK01\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{tls}\"\nca_file = \"{}\"\n",
            d.join("ca.pem").display()
        );
        if client_cert {
            config.push_str(&format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                d.join("client.pem").display(),
                d.join("client.key").display()
            ));
        }
        let path = d.join(format!("dockcast-{client_cert}.toml"));
        std::fs::write(&path, config).expect("config");
        peers::daemon::daemon_command()
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(d.join(format!("daemon-{client_cert}.log"))).expect("log"),
            )
            .spawn()
            .expect("spawn dockcast")
    };

    let mut cloud = CloudClient::connect(plain, "TLSDOCK01");
    let mut daemon = run(true);
    let capacity = cloud.wait_state("live_capacity", |_| true, Duration::from_secs(20));
    assert_eq!(capacity["device_list"][0]["sn"], "TLSDOCK01", "{capacity}");
    let (tid, _) = cloud.send_service(
        "live_stop_push",
        json!({"video_id": "TLSDOCK01/165-0-7/normal-0"}),
    );
    let reply = cloud.wait_reply(&tid, Duration::from_secs(20));
    assert_eq!(
        reply["data"]["result"], 513011,
        "answered over TLS: {reply}"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();

    // Without its certificate the broker refuses the daemon: no capacity ever arrives.
    cloud.skip_received_states();
    let mut refused = run(false);
    let got = cloud.try_wait_state_message("live_capacity", |_| true, Duration::from_secs(4));
    assert!(got.is_none(), "a client without a certificate got through");
    let log = std::fs::read_to_string(d.join("daemon-false.log")).unwrap_or_default();
    assert!(
        log.contains("MQTT link down"),
        "the refusal should be logged: {log}"
    );
    let _ = refused.kill();
    let _ = refused.wait();
    let _ = broker.kill();
    let _ = broker.wait();
}
