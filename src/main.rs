//! The `dockcast` command: `run` the daemon, drive a dock with `ctl`, `check-config` a file.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dockcast::cloud;
use dockcast::config::{Config, DEFAULT_PATH};
use dockcast::ctl::{self, CtlRequest};
use dockcast::link::{self, LinkSettings};
use dockcast::live::actor::{self, ActorSetup};
use dockcast::live::catalog::Catalog;
use dockcast::live::manager::Manager;
use dockcast::live::session::SinkSettings;
use dockcast::sink::rtmp::RtmpOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "dockcast",
    version,
    about = "Live-stream gateway for DJI Docks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: answer the cloud's live commands and push the streams.
    Run {
        /// Config file (default /etc/dockcast/dockcast.toml; built-in defaults if absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Broker url, overriding the config (mqtt://host:port or mqtts://host:port).
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Gateway serial, overriding the config.
        #[arg(long)]
        gateway_sn: Option<String>,
        /// Feed every lens of the first video from this source (pattern, pattern:STYLE,
        /// file:PATH).
        #[arg(long)]
        source: Option<String>,
    },
    /// Send one live service to a gateway as the cloud would, print the reply, exit 0 iff
    /// result is 0.
    Ctl {
        /// Broker url (mqtt://host:port).
        #[arg(long)]
        mqtt_url: String,
        /// Serial of the gateway to command.
        #[arg(long)]
        gateway_sn: String,
        /// Broker username.
        #[arg(long)]
        username: Option<String>,
        /// Broker password (or DOCKCAST_MQTT_PASSWORD).
        #[arg(long, env = "DOCKCAST_MQTT_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// How long to wait for the reply.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        #[command(subcommand)]
        request: CtlCmd,
    },
    /// Validate a config file and say which key is wrong.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// live_start_push
    Start {
        /// Push url (rtmp://host/app/key).
        #[arg(long)]
        url: String,
        /// 0 Agora, 1 RTMP, 3 GB28181, 4 WHIP.
        #[arg(long, default_value_t = 1)]
        url_type: u8,
        /// {sn}/{camera_index}/{video_index}
        #[arg(long)]
        video_id: String,
        /// 0 adaptive, 1 smooth, 2 standard, 3 high, 4 ultra-high.
        #[arg(long, default_value_t = 0)]
        quality: u8,
    },
    /// live_stop_push
    Stop {
        /// {sn}/{camera_index}/{video_index}
        #[arg(long)]
        video_id: String,
    },
    /// live_set_quality
    Quality {
        /// {sn}/{camera_index}/{video_index}
        #[arg(long)]
        video_id: String,
        /// 0 adaptive, 1 smooth, 2 standard, 3 high, 4 ultra-high.
        #[arg(long)]
        quality: u8,
    },
    /// live_lens_change
    Lens {
        /// normal, wide, zoom or ir.
        #[arg(long)]
        lens: String,
        /// Optional {sn}/{camera_index}/{video_index}.
        #[arg(long)]
        video_id: Option<String>,
    },
    /// Print the live_capacity the gateway announced (retained).
    Capacity,
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd, stderr is connected to the journal: log natively there so fields and
    // levels survive; on a terminal, log readable lines.
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let fmt = journald
        .is_none()
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(fmt)
        .init();
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if std::path::Path::new(DEFAULT_PATH).exists() => {
            Ok(Config::load(std::path::Path::new(DEFAULT_PATH))?)
        }
        None => {
            info!("no config file at {DEFAULT_PATH}: using the built-in test-pattern camera");
            Ok(Config::default())
        }
    }
}

async fn run_daemon(
    config: Option<PathBuf>,
    mqtt_url: Option<String>,
    gateway_sn: Option<String>,
    source: Option<String>,
) -> Result<()> {
    let mut config = load_config(config.as_ref())?;
    if let Some(url) = mqtt_url {
        config.mqtt.url = url;
    }
    if let Some(sn) = gateway_sn {
        config.gateway.sn = sn;
    }
    if let Some(uri) = source {
        config.override_source(&uri)?;
    }
    config.validate()?;

    let catalog = Catalog::from_config(&config);
    let capacity = catalog.capacity(&config);
    let gateway_sn = config.gateway.sn.clone();
    let settings = LinkSettings {
        mqtt: config.mqtt.clone(),
        client_id: config.client_id(),
        services_topic: cloud::services_topic(&gateway_sn),
    };
    let opts = link::options(&settings)?;
    let sinks = SinkSettings {
        rtmp: RtmpOptions {
            connect_timeout: Duration::from_millis(config.rtmp.connect_timeout_ms),
            backoff_initial: Duration::from_millis(config.rtmp.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.rtmp.backoff_max_ms),
            ..RtmpOptions::default()
        },
        queue_frames: config.rtmp.queue_frames,
    };
    let manager = Manager::new(catalog, config.quality.clone(), config.encoder.gop_frames);
    info!(
        gateway = %gateway_sn,
        broker = %config.mqtt.url,
        videos = manager.catalog().videos.len(),
        "dockcast {} starting",
        env!("CARGO_PKG_VERSION")
    );

    let (services_tx, services_rx) = tokio::sync::mpsc::channel(64);
    let (link_tx, link_rx) = tokio::sync::mpsc::channel(256);
    let stop_actor = CancellationToken::new();
    let stop_link = CancellationToken::new();
    let link_task = tokio::spawn(link::run(
        settings,
        opts,
        services_tx,
        link_rx,
        stop_link.clone(),
    ));
    let actor_task = tokio::spawn(actor::run(
        ActorSetup {
            manager,
            sinks,
            gateway_sn,
            capacity,
        },
        services_rx,
        link_tx,
        stop_actor.clone(),
    ));

    wait_for_signal().await?;
    info!("shutting down");
    stop_actor.cancel();
    if tokio::time::timeout(Duration::from_secs(4), actor_task)
        .await
        .is_err()
    {
        warn!("sessions did not all close within 4 s");
    }
    stop_link.cancel();
    let _ = tokio::time::timeout(Duration::from_millis(700), link_task).await;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            config,
            mqtt_url,
            gateway_sn,
            source,
        } => {
            init_logging();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run_daemon(config, mqtt_url, gateway_sn, source)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Ctl {
            mqtt_url,
            gateway_sn,
            username,
            password,
            timeout_secs,
            request,
        } => {
            let request = match request {
                CtlCmd::Start {
                    url,
                    url_type,
                    video_id,
                    quality,
                } => CtlRequest::Start {
                    url,
                    url_type,
                    video_id,
                    quality,
                },
                CtlCmd::Stop { video_id } => CtlRequest::Stop { video_id },
                CtlCmd::Quality { video_id, quality } => CtlRequest::Quality { video_id, quality },
                CtlCmd::Lens { lens, video_id } => CtlRequest::Lens { lens, video_id },
                CtlCmd::Capacity => CtlRequest::Capacity,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(ctl::run(
                &mqtt_url,
                username.as_deref(),
                password.as_deref(),
                &gateway_sn,
                &request,
                Duration::from_secs(timeout_secs),
            )) {
                Ok((reply, ok)) => {
                    println!("{reply}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("dockcast ctl: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
