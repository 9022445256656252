//! The `wharf` command line: `serve` and `cargo-config`. Flags read `WHARF_*` environment
//! variables too; the rest of the settings come from proxy.toml (see `config`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, LogFormat, Overrides};
use crate::policy::Clock;
use crate::registry::tokens::{self, Scope};
use crate::store::FsStore;

#[derive(Parser, Debug)]
#[command(
    name = "wharf",
    version,
    about = "A caching proxy and mirror of the crates.io sparse registry"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Config file (default: ./proxy.toml when present).
    #[arg(long, env = "WHARF_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// URL clients use to reach wharf (default: http://<listen address>).
    #[arg(long, env = "WHARF_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the mirror.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free port).
        #[arg(long, env = "WHARF_LISTEN")]
        listen: Option<String>,
        /// Where cached data lives (default ./data).
        #[arg(long, env = "WHARF_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Never contact the upstream; serve only what is cached.
        #[arg(long, env = "WHARF_OFFLINE")]
        offline: bool,
        /// Upstream sparse index: "crates-io" or a URL.
        #[arg(long, env = "WHARF_UPSTREAM")]
        upstream: Option<String>,
        #[arg(long, env = "WHARF_LOG_FORMAT", value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Print the .cargo/config.toml that points cargo at this wharf.
    CargoConfig {
        #[command(flatten)]
        common: Common,
    },
    /// Warm a running wharf with every crates.io package of the given lockfiles.
    Prefetch {
        /// Cargo.lock files.
        #[arg(required = true)]
        lockfiles: Vec<PathBuf>,
        /// The running wharf.
        #[arg(long, env = "WHARF_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Crates fetched at once.
        #[arg(long, default_value_t = 16)]
        jobs: usize,
    },
    /// Write what the lockfiles need (index files and crates) into one tar archive, laid
    /// out as a static sparse registry with a manifest of sha256 sums.
    Export {
        #[arg(long = "lockfile", required = true, num_args = 1..)]
        lockfiles: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// The URL the archive's index/config.json names for downloads, if it is served
        /// by a plain web server.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        static_url: String,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Verify an archive made by `export` and, only if all of it checks out, add it to the
    /// cache (safe while a wharf serves the same data directory).
    Import {
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Evict least-recently-used mirror crates until the store is under cache.max_size
    /// (never private or pinned crates), and report what was freed.
    Gc {
        /// Report what would be evicted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Overrides cache.max_size (e.g. "20GiB").
        #[arg(long)]
        max_size: Option<bytesize::ByteSize>,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Re-hash every stored crate against its index checksum; report (and with --repair,
    /// move aside) what does not match.
    Verify {
        /// Move bad mirror crates and damaged index records aside, so they are fetched again.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Manage API tokens of the private registry (works on the data directory; a running
    /// server sees changes within a second).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Upload a .crate built elsewhere (e.g. a CI artifact) to the private registry.
    Push {
        /// The .crate file.
        file: PathBuf,
        /// wharf's public URL.
        #[arg(long, env = "WHARF_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// A publish token (else CARGO_REGISTRIES_WHARF_TOKEN).
        #[arg(long, env = "WHARF_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct DataDirArgs {
    /// Config file (default: ./proxy.toml when present); gives the data directory.
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// The data directory of the wharf to manage (default ./data).
    #[arg(long, env = "WHARF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token and print it (only its hash is stored: copy it now).
    Create {
        /// Unique token name, e.g. `alice-laptop` or `ci`.
        #[arg(long)]
        name: String,
        /// The user the token acts as (crate owners are users); default: the token name.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, value_enum, default_value = "publish")]
        scope: Scope,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// List tokens (names, users, scopes; never the tokens themselves).
    List {
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Revoke the token called NAME.
    Revoke {
        name: String,
        #[command(flatten)]
        dir: DataDirArgs,
    },
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            common,
            listen,
            data_dir,
            offline,
            upstream,
            log_format,
        } => {
            let file = config::load_file(common.config.as_deref())?;
            let cfg = config::resolve(
                file,
                Overrides {
                    listen,
                    public_url: common.public_url,
                    data_dir,
                    offline,
                    upstream,
                    log_format,
                },
            )?;
            init_tracing(cfg.log_format);
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(serve(cfg))
        }
        Command::CargoConfig { common } => {
            let file = config::load_file(common.config.as_deref())?;
            let cfg = config::resolve(
                file,
                Overrides {
                    public_url: common.public_url,
                    ..Default::default()
                },
            )?;
            let url = cfg
                .public_url
                .unwrap_or_else(|| format!("http://{}", cfg.listen));
            print!("{}", cargo_config(&url));
            Ok(())
        }
        Command::Prefetch {
            lockfiles,
            server,
            jobs,
        } => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(prefetch(&lockfiles, &server, jobs))
        }
        Command::Export {
            lockfiles,
            out,
            static_url,
            dir,
        } => {
            let dir = data_dir(&dir)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(export(&lockfiles, &out, &static_url, &dir))
        }
        Command::Import { file, dir } => {
            let dir = data_dir(&dir)?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(async {
                let s = crate::ops::bundle::import(
                    &FsStore::new(&dir),
                    &file,
                    std::time::SystemTime::now(),
                )
                .await?;
                eprintln!(
                    "import: {} index files written ({} newer ones kept), {} crates added ({} already present)",
                    s.index_files, s.index_kept, s.crates, s.crates_present
                );
                anyhow::Ok(())
            })
        }
        Command::Gc {
            dry_run,
            max_size,
            dir,
        } => {
            let cfg = dir_config(&dir)?;
            let limit = max_size
                .map(|b| b.as_u64())
                .or(cfg.cache.max_size)
                .context("no size limit: set cache.max_size in proxy.toml or pass --max-size")?;
            let pinned = crate::ops::gc::pinned_keys(&cfg.cache.pin).map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let p = rt
                .block_on(crate::ops::gc::run(
                    &FsStore::new(&cfg.data_dir),
                    limit,
                    &pinned,
                    dry_run,
                ))
                .map_err(anyhow::Error::msg)?;
            let verb = if dry_run { "would evict" } else { "evicted" };
            for (k, n) in &p.evict {
                println!("{verb} {k} ({n} bytes)");
            }
            println!(
                "gc: store {} bytes, limit {limit}; {verb} {} crates, {} bytes{}",
                p.total,
                p.evict.len(),
                p.freed,
                if p.total - p.freed > limit {
                    " (still over the limit: the rest is private, pinned or index data)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Verify { repair, dir } => {
            let dir = data_dir(&dir)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(verify(&dir, repair))
        }
        Command::Token { cmd } => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(token_cmd(cmd))
        }
        Command::Push {
            file,
            server,
            token,
        } => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(push(&file, &server, token))
        }
    }
}

async fn prefetch(lockfiles: &[PathBuf], server: &str, jobs: usize) -> anyhow::Result<()> {
    use crate::ops::prefetch;
    let items = prefetch::plan_files(lockfiles).map_err(anyhow::Error::msg)?;
    let s = prefetch::run(items, server, jobs, true).await;
    for (name, why) in &s.skipped {
        eprintln!("skipped  {name}: {why}");
    }
    for (label, why) in &s.failed {
        eprintln!("failed   {label}: {why}");
    }
    eprintln!(
        "prefetch: {} fetched, {} already cached, {} failed, {} skipped in {:.1} s ({:.1} crates/s)",
        s.fetched,
        s.cached,
        s.failed.len(),
        s.skipped.len(),
        s.elapsed.as_secs_f64(),
        s.crates_per_second()
    );
    if !s.failed.is_empty() {
        anyhow::bail!("{} crate(s) could not be prefetched", s.failed.len());
    }
    Ok(())
}

async fn export(
    lockfiles: &[PathBuf],
    out: &std::path::Path,
    static_url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let items = crate::ops::prefetch::plan_files(lockfiles).map_err(anyhow::Error::msg)?;
    let s = crate::ops::bundle::export(&FsStore::new(dir), &items, out, static_url).await?;
    eprintln!(
        "export: {} index files and {} crates ({} bytes) written to {}",
        s.index_files,
        s.crates,
        s.bytes,
        out.display()
    );
    Ok(())
}

async fn verify(dir: &std::path::Path, repair: bool) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!("no data directory at {}", dir.display());
    }
    let store = FsStore::new(dir);
    let r = crate::ops::verify::verify(&store, repair)
        .await
        .map_err(anyhow::Error::msg)?;
    for (what, why) in &r.problems {
        println!("BAD      {what}: {why}");
    }
    for k in &r.repaired {
        println!("moved    {k} -> quarantine-v1/ (it will be fetched again)");
    }
    for u in &r.unverifiable {
        println!("skipped  {u}: no index record to check against");
    }
    println!(
        "verify: {} crates checked, {} problems, {} repaired, {} unverifiable",
        r.checked,
        r.problems.len(),
        r.repaired.len(),
        r.unverifiable.len()
    );
    if r.problems.len() > r.repaired.len() {
        anyhow::bail!(
            "the cache has problems{}",
            if repair {
                " that --repair cannot fix"
            } else {
                " (run with --repair)"
            }
        );
    }
    Ok(())
}

/// The settings of the wharf whose data directory a maintenance command works on.
fn dir_config(d: &DataDirArgs) -> anyhow::Result<config::Config> {
    let file = config::load_file(d.config.as_deref())?;
    Ok(config::resolve(
        file,
        Overrides {
            data_dir: d.data_dir.clone(),
            ..Default::default()
        },
    )?)
}

fn data_dir(d: &DataDirArgs) -> anyhow::Result<PathBuf> {
    Ok(dir_config(d)?.data_dir)
}

async fn token_cmd(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            name,
            user,
            scope,
            dir,
        } => {
            let dir = data_dir(&dir)?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
            let store = FsStore::new(&dir);
            let user = user.unwrap_or_else(|| name.clone());
            let t =
                tokens::create(&store, &name, &user, scope, std::time::SystemTime::now()).await?;
            println!("{t}");
        }
        TokenCmd::List { dir } => {
            let store = FsStore::new(data_dir(&dir)?);
            let (db, _) = tokens::load(&store).await?;
            println!("{:<24} {:<16} {:<8} created", "name", "user", "scope");
            for t in db.tokens {
                let scope = match t.scope {
                    Scope::Publish => "publish",
                    Scope::Read => "read",
                };
                println!("{:<24} {:<16} {:<8} {}", t.name, t.user, scope, t.created);
            }
        }
        TokenCmd::Revoke { name, dir } => {
            let store = FsStore::new(data_dir(&dir)?);
            if !tokens::revoke(&store, &name).await? {
                anyhow::bail!("no token named `{name}`");
            }
            eprintln!("revoked `{name}`");
        }
    }
    Ok(())
}

async fn push(file: &std::path::Path, server: &str, token: Option<String>) -> anyhow::Result<()> {
    use crate::registry::{publish, push};
    let token = token
        .or_else(|| std::env::var("CARGO_REGISTRIES_WHARF_TOKEN").ok())
        .context("no token: pass --token, or set WHARF_TOKEN or CARGO_REGISTRIES_WHARF_TOKEN")?;
    let server = server.trim_end_matches('/');
    let tarball = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let manifest = publish::read_manifest(&tarball, &publish::Limits::default())?;
    let meta = push::metadata_from_manifest(&manifest, &format!("{server}/private/index/"))
        .map_err(anyhow::Error::msg)?;
    let body = publish::encode_body(&meta, &tarball);
    crate::upstream::install_crypto_provider();
    let resp = reqwest::Client::new()
        .put(format!("{server}/private/api/v1/crates/new"))
        .header("authorization", token)
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("sending to {server}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if let Some(errs) = v["errors"].as_array() {
        let details: Vec<&str> = errs.iter().filter_map(|e| e["detail"].as_str()).collect();
        anyhow::bail!(
            "{} refused {} {}: {}",
            server,
            meta.name,
            meta.vers,
            details.join("; ")
        );
    }
    if !status.is_success() {
        anyhow::bail!("{server} answered {status}: {text}");
    }
    eprintln!("pushed {} {} to {server}", meta.name, meta.vers);
    Ok(())
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    let running = crate::start(&cfg, Clock::system()).await?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        upstream = %cfg.upstream.index_url,
        offline = cfg.offline,
        "listening on {}://{}",
        if cfg.server.tls.is_some() { "https" } else { "http" },
        running.addr
    );
    tracing::info!(
        "point cargo at it: `wharf cargo-config --public-url {}`",
        running.public_url
    );
    shutdown_signal().await;
    tracing::info!("signal received; draining");
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// The `.cargo/config.toml` for both roots: crates-io replaced by the mirror, and the
/// private registry `wharf` with cargo's token credential provider.
pub fn cargo_config(public_url: &str) -> String {
    let url = public_url.trim_end_matches('/');
    format!(
        "# Generated by `wharf cargo-config`: put this in .cargo/config.toml\n\
         # (of a project, or of $CARGO_HOME for every project).\n\
         \n\
         # Every crates.io crate comes through wharf's mirror.\n\
         [source.crates-io]\n\
         replace-with = \"wharf-mirror\"\n\
         \n\
         [source.wharf-mirror]\n\
         registry = \"sparse+{url}/index/\"\n\
         \n\
         # Private crates: `cargo publish --registry wharf`, and in Cargo.toml\n\
         # `my-crate = {{ version = \"1\", registry = \"wharf\" }}`.\n\
         # Token: `cargo login --registry wharf` or CARGO_REGISTRIES_WHARF_TOKEN.\n\
         [registries.wharf]\n\
         index = \"sparse+{url}/private/index/\"\n\
         credential-provider = [\"cargo:token\"]\n"
    )
}
