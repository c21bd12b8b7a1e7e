//! The command line: parse it, load and validate the configuration before
//! binding anything, then run, check, fetch one token, or start the demo.
//! Exit codes: 0 success, 1 configuration or credential error, 2 usage
//! error (clap). It lives in the library, not in `main.rs`, so that a
//! release build compiles the serving code once: the futures the binary
//! polls would otherwise be compiled again in the binary crate.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use crate::config::{self, ConfigErrors};
use crate::credential::ObtainError;
use crate::demo::DemoError;
use crate::error_chain::error_chain;
use crate::preflight::{self, Checked, preflight};
use crate::secret::ProcessEnv;
use crate::server::{ServeError, Serving};
use crate::signals;

/// Longest a reload waits for the first tokens of new or changed credentials.
const RELOAD_READY_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "sidekey",
    version,
    about = "Sidecar proxy that injects authentication into outbound API calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration and every secret reference.
    Check {
        /// Configuration file.
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
    },
    /// Obtain one token for credential NAME and print its type and lifetime.
    Token {
        /// Configuration file.
        #[arg(long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// The credential's name (`[credentials.NAME]`).
        name: String,
        /// Also print the token itself.
        #[arg(long)]
        show: bool,
    },
    /// Self-contained demo: embedded token server, echo upstream, proxy in front.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

/// Why a command failed; printed once, with its causes, as `error: …`.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Token(#[from] ObtainError),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error("cannot write the token to standard output")]
    Stdout(#[source] std::io::Error),
}

/// `text` and a newline on standard output. A closed or broken stdout is an
/// error, not the panic `println!` makes of it.
fn out(text: &str) -> std::io::Result<()> {
    writeln!(std::io::stdout().lock(), "{text}")
}

/// Parse the command line and run the command; `return_freed_memory`
/// starts the binary's allocator upkeep ([`run`] calls it before serving).
pub fn main(return_freed_memory: fn()) -> ExitCode {
    let cli = Cli::parse();
    // The main thread's runtime runs the credential engines, the admin
    // listener, signals and reloads; `run` serves the proxy listeners on
    // their own worker threads (`crate::workers`).
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
        .and_then(|runtime| {
            let result = runtime.block_on(async {
                match cli.command {
                    Command::Run { config } => run(&config, return_freed_memory).await,
                    Command::Check { config } => check(&config),
                    Command::Token { config, name, show } => token(&config, &name, show).await,
                    Command::Demo { listen } => Ok(crate::demo::run(listen).await?),
                }
            });
            // A token cache write stuck on a stalled disk may hold the exit
            // this long, not for ever (dropping the runtime would wait).
            runtime.shutdown_timeout(crate::cache::FILE_WAIT);
            result
        });
    crate::telemetry::flush();
    // Written directly, ignoring a closed stderr (`eprintln!` would panic).
    let mut stderr = std::io::stderr();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Config(ConfigErrors(errors))) => {
            for error in errors {
                let _ = writeln!(stderr, "error: {error}");
            }
            ExitCode::from(1)
        }
        Err(err) => {
            let _ = writeln!(stderr, "error: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

/// Load and fully validate (including secrets and TLS files).
fn load_checked(path: &Path) -> Result<Checked, ConfigErrors> {
    checked(config::read(path, Arc::new(ProcessEnv)))
}

/// A configuration read as far as it goes and the errors found, with its
/// secrets and TLS files checked too: every error, by line.
fn checked((config, mut errors): config::Loaded) -> Result<Checked, ConfigErrors> {
    match config.map(preflight) {
        Some(Ok(checked)) if errors.is_empty() => return Ok(checked),
        Some(Err(ConfigErrors(more))) => errors.extend(more),
        _ => {}
    }
    errors.sort_by_key(|error| error.line.unwrap_or(usize::MAX));
    Err(ConfigErrors(errors))
}

/// `sidekey check`: warnings and every error on stderr; on stdout, when the
/// configuration is valid, a summary, and what it reads (names and paths,
/// never values) whether valid or not. Nothing is sent over the network.
fn check(path: &Path) -> Result<(), CliError> {
    let (config, errors) = config::read(path, Arc::new(ProcessEnv));
    for warning in config.iter().flat_map(|config| &config.warnings) {
        eprintln!("warning: {warning}");
    }
    let reads = config.as_ref().map(|config| {
        let (env, files) = preflight::inputs(config);
        let list = |names: Vec<String>| match names.is_empty() {
            true => "none".to_owned(),
            false => names.join(", "),
        };
        let env = list(env.into_iter().map(str::to_owned).collect());
        let files = list(files.iter().map(|f| f.display().to_string()).collect());
        format!("environment variables read: {env}\nfiles read: {files}")
    });
    let Checked { config, .. } = checked((config, errors)).inspect_err(|_| {
        if let Some(reads) = &reads {
            let _ = out(reads); // the exit code is check's verdict
        }
    })?;
    let proxy = match config.forward_proxy {
        Some(_) => ", forward proxy",
        None => "",
    };
    let cache = config.cache.as_ref();
    let cache = match cache.map(|cache| (cache.redis_url.is_some(), cache.file.is_some())) {
        Some((true, true)) => ", tokens shared on Redis and kept in a file",
        Some((true, false)) => ", tokens shared on Redis",
        Some((false, true)) => ", tokens kept in a file",
        _ => "",
    };
    let (credentials, routes) = (config.credentials.len(), config.routes.len());
    let path = path.display();
    let _ = out(&format!(
        "{path}: ok ({credentials} credential(s), {routes} route(s){proxy}{cache})\n{}\n\
         check does not contact the network; `sidekey token --config {path} NAME` obtains a \
         token for credential NAME",
        reads.unwrap_or_default()
    ));
    Ok(())
}

async fn token(path: &Path, name: &str, show: bool) -> Result<(), CliError> {
    let Checked { config, roots, .. } = load_checked(path)?;
    crate::telemetry::init(&config.log);
    log_warnings(&config);
    let (token, kind) = crate::credential::obtain_once(&config, name, &roots).await?;
    let lifetime = match token.lifetime {
        Some(lifetime) => format!("expires in {}s", lifetime.as_secs()),
        None => "does not expire".to_owned(),
    };
    let mut said = out(&format!("credential {name}: type {kind}, {lifetime}"));
    if show {
        said = said.and_then(|()| out(token.value.expose()));
    }
    said.map_err(CliError::Stdout)
}

/// Log what the configuration accepts with a warning; loading runs before
/// logging is set up, so the loader only collects these.
fn log_warnings(config: &config::Config) {
    for warning in &config.warnings {
        let (file, key) = (warning.path.display(), &warning.key);
        warn!(file = %file, line = warning.line, key = %key, "{}", warning.message);
    }
}

/// Read `path` again and apply it; a refusal is logged and the old
/// configuration keeps serving.
async fn reload(path: &Path, handle: &mut crate::server::Handle) {
    info!(config = %path.display(), "reloading the configuration");
    let outcome = match load_checked(path) {
        Ok(checked) => {
            log_warnings(&checked.config);
            let log = checked.config.log.clone();
            let reloaded = handle.reload(checked, RELOAD_READY_WAIT).await;
            reloaded
                .inspect(|()| crate::telemetry::reload(&log))
                .map_err(CliError::from)
        }
        Err(err) => Err(err.into()),
    };
    if let Err(err) = outcome {
        let why = error_chain(&err);
        error!("reload refused, the old configuration keeps serving: {why}");
        handle.reload_refused(why);
    }
}

async fn run(path: &Path, return_freed_memory: fn()) -> Result<(), CliError> {
    // First of all: until then SIGHUP's default action ends the process,
    // and a reload asked for while starting would end it. It is handled
    // once serving. SIGTERM and SIGINT keep their default action while the
    // files are read: a start stuck on one ends at once.
    let mut signals = signals::Signals::install_reload();
    let checked = load_checked(path)?;
    crate::telemetry::init(&checked.config.log);
    log_warnings(&checked.config);
    raise_fd_limit();
    return_freed_memory();
    signals.install_stop();
    let mut handle = crate::server::serve_with(checked, Serving::Workers).await?;
    info!(version = env!("CARGO_PKG_VERSION"), "sidekey running");
    let mut signal = signals.next().await;
    while signal == signals::Signal::Reload {
        signal = reload_under_signals(path, &mut handle, &mut signals).await;
    }
    info!("shutting down");
    // A second SIGTERM or SIGINT (Ctrl-C twice) ends the drain: dropping
    // the handle closes the connections still open.
    tokio::select! {
        () = handle.shutdown() => {}
        () = signals.next_stop() => {
            warn!("stop signal received again: closing the open connections without waiting");
        }
    }
    Ok(())
}

/// One reload, with signals handled while it waits for new tokens; the
/// next signal to act on.
///
/// - SIGTERM/SIGINT cancel it; the old configuration drains.
/// - SIGHUP with the configuration file changed starts it over with the
///   file as it is now.
/// - SIGHUP with the file as it was lets it finish, then one more reload
///   follows (a secret file may have changed). Starting over would cost
///   the new credentials another token request each time, and SIGHUPs
///   coming faster than a token endpoint answers would keep the reload
///   from ever finishing.
async fn reload_under_signals(
    path: &Path,
    handle: &mut crate::server::Handle,
    signals: &mut signals::Signals,
) -> signals::Signal {
    let text = crate::small_file::read_to_string(path).ok();
    let reloading = reload(path, handle);
    tokio::pin!(reloading);
    let mut again = false;
    loop {
        tokio::select! {
            () = &mut reloading => break,
            next = signals.next() => match next {
                signals::Signal::Stop => {
                    warn!("reload cancelled by a stop signal; the old configuration drains");
                    return next;
                }
                _ if crate::small_file::read_to_string(path).ok() != text => {
                    info!("reload requested again with the file changed; starting over");
                    return next;
                }
                _ => {
                    if !again {
                        info!("reload requested again, the file unchanged: one more follows this one");
                    }
                    again = true;
                }
            },
        }
    }
    if again {
        signals::Signal::Reload
    } else {
        signals.next().await
    }
}

/// Each app connection costs a file descriptor (and often a second one
/// upstream); the common soft limit of 1024 is far below what the hard limit
/// allows, so take the hard limit before binding anything.
fn raise_fd_limit() {
    match crate::conn::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            info!(from = before, to = after, "raised the open-file limit");
        }
        Ok(_) => {}
        Err(err) => warn!(error = %err, "cannot raise the open-file limit"),
    }
}
