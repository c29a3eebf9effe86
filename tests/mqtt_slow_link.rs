//! The MQTT link over a slow uplink: mosquitto behind a proxy that holds the broker's first
//! bytes (its CONNACK) for 1.5 s, as a congested 4G link or a slow TLS handshake does, while
//! the daemon has state to announce every 100 ms. The connect in progress must be seen
//! through, not started over on every announcement, and what was announced meanwhile must
//! reach the broker once connected.

mod peers;

use dockcast::config::MqttConfig;
use dockcast::link::{self, LinkCommand, LinkSettings};
use peers::mosquitto::Mosquitto;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const HOLD: Duration = Duration::from_millis(1500);

/// Forwards each connection to `upstream`, delaying the first bytes back by [`HOLD`]; counts
/// the connections.
async fn slow_proxy(listener: TcpListener, upstream: u16, connections: Arc<AtomicUsize>) {
    while let Ok((client, _)) = listener.accept().await {
        connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let up = tokio::io::copy(&mut client_rx, &mut server_tx);
            let down = async {
                let mut first = [0u8; 1024];
                let n = tokio::io::AsyncReadExt::read(&mut server_rx, &mut first).await?;
                tokio::time::sleep(HOLD).await;
                client_tx.write_all(&first[..n]).await?;
                tokio::io::copy(&mut server_rx, &mut client_tx).await
            };
            let _ = tokio::join!(up, down);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_connect_is_seen_through_while_state_is_announced() {
    let broker = Mosquitto::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy_port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::spawn(slow_proxy(listener, broker.port(), connections.clone()));

    let settings = LinkSettings {
        mqtt: MqttConfig {
            url: format!("mqtt://127.0.0.1:{proxy_port}"),
            ..MqttConfig::default()
        },
        client_id: "slow-link".into(),
        services_topic: "thing/product/SLOW/services".into(),
    };
    let opts = link::options(&settings).expect("options");
    let (services_tx, _services) = mpsc::channel(8);
    let (commands, commands_rx) = mpsc::channel(256);
    let (connected_tx, mut connected) = watch::channel(false);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(link::run(
        settings,
        opts,
        services_tx,
        commands_rx,
        connected_tx,
        cancel.clone(),
    ));

    // Announce every 100 ms until connected (bounded: 100 rounds, 10 s).
    let mut announced = 0;
    for round in 0..100 {
        if *connected.borrow() {
            break;
        }
        commands
            .send(LinkCommand::Announce {
                topic: "thing/product/SLOW/state".into(),
                key: "live_status",
                payload: format!("{{\"round\":{round}}}").into_bytes(),
                retain: true,
            })
            .await
            .expect("link alive");
        announced = round;
        let _ = tokio::time::timeout(Duration::from_millis(100), connected.changed()).await;
    }
    assert!(
        *connected.borrow(),
        "never connected within 10 s; {} connections opened",
        connections.load(Ordering::SeqCst)
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the connect was started over while announcing"
    );

    // The latest announcement reached the broker (retained, so a subscriber now sees it).
    let port = broker.port().to_string();
    let got = tokio::task::spawn_blocking(move || {
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "thing/product/SLOW/state",
            ])
            .args(["-C", "1", "-W", "5"])
            .output()
            .expect("mosquitto_sub")
    })
    .await
    .expect("join");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        format!("{{\"round\":{announced}}}"),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("link ended")
        .expect("no panic");
}
