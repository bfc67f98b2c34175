//! `m3u-client`: the command-line client of m3u-proxy. It parses arguments, calls the typed
//! [`ApiClient`], and prints what [`m3u_proxy::cli`] renders (or, with `--json`, the server's
//! JSON as sent). It holds no logic of its own beyond that choice.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use m3u_proxy::cli::{self, monitor, render, Subject};
use m3u_proxy::client::{ApiClient, ClientError, Endpoint};
use m3u_proxy::model::{CreatePlaylist, CreateStream, MergeKey};

/// Command-line client of m3u-proxy: manage streams, read statistics, watch viewers live.
#[derive(Debug, Parser)]
#[command(name = "m3u-client", version, propagate_version = true)]
struct Args {
    /// Base URL of the m3u-proxy server.
    #[arg(
        long,
        global = true,
        env = "M3U_PROXY_URL",
        default_value = "http://localhost:8001"
    )]
    server: String,
    /// API token of the server, sent as X-API-Token.
    #[arg(long, global = true, env = "API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON answer instead of tables (one line per refresh for monitor).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Api(ApiCommand),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    Completions { shell: Shell },
}

/// The commands that talk to the server.
#[derive(Debug, Subcommand)]
enum ApiCommand {
    /// Register a stream, or update the settings of an already registered URL.
    Create {
        /// Upstream URL: an HLS playlist or a direct file/live stream (.ts, .mp4, .mkv...).
        url: String,
        /// Backup URLs, tried in order when the current one fails.
        #[arg(long = "failover", value_name = "URL", num_args = 1..)]
        failover: Vec<String>,
        /// User-Agent sent to the origin.
        #[arg(long)]
        user_agent: Option<String>,
        /// Extra header sent to the origin, as NAME:VALUE (repeatable).
        #[arg(long = "header", value_name = "NAME:VALUE", value_parser = cli::parse_header)]
        header: Vec<(String, String)>,
    },
    /// List every stream with its viewers, bytes served and errors.
    List,
    /// Show one stream in full, with its viewers.
    Info { id: String },
    /// Remove a stream and disconnect its viewers.
    Delete { id: String },
    /// Switch a stream to its next failover URL now.
    Failover { id: String },
    /// Show the proxy's totals, every stream and every client.
    Stats,
    /// List viewers, or show one.
    Clients { id: Option<String> },
    /// Check that the server is up.
    Health,
    /// List the providers (connection-limited accounts) with the slots they hold.
    Providers,
    /// List the channel lists with their channel counts and last refresh.
    Playlists,
    /// Import a channel list (an M3U URL, e.g. a provider's get.php?...&type=m3u_plus).
    Import {
        /// URL of the M3U list.
        url: String,
        /// Name of the list.
        #[arg(long)]
        name: String,
        /// Minutes between automatic refreshes.
        #[arg(long)]
        refresh_interval_minutes: Option<u64>,
        /// Merge channels with the same key across merged lists into one stream.
        #[arg(long, value_parser = ["tvg-id", "name"])]
        merge: Option<String>,
        /// The provider whose connection limits the list's streams count against.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Fetch a channel list again now and apply what changed.
    Refresh { id: String },
    /// Watch streams, viewers and bytes per second live, until Ctrl-C.
    Monitor {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
}

impl ApiCommand {
    fn subject(&self) -> Option<Subject<'_>> {
        match self {
            ApiCommand::Info { id } | ApiCommand::Delete { id } | ApiCommand::Failover { id } => {
                Some(Subject::Stream(id))
            }
            ApiCommand::Clients { id: Some(id) } => Some(Subject::Client(id)),
            _ => None,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => match cli::usage_error(&err, "m3u-client") {
            Some(line) => {
                eprintln!("{line}");
                return ExitCode::from(cli::exit::USAGE);
            }
            None => err.exit(),
        },
    };
    let command = match args.command {
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a closed stdout.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "m3u-client", &mut script);
            emit(&String::from_utf8_lossy(&script));
            return ExitCode::SUCCESS;
        }
        Command::Api(command) => command,
    };
    let outcome = match ApiClient::new(&args.server, args.token) {
        Ok(client) => run(&client, &command, args.json).await,
        Err(err) => Err(err),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", cli::error_line(&err, command.subject()));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}

async fn run(client: &ApiClient, command: &ApiCommand, json: bool) -> Result<(), ClientError> {
    let now = chrono::Utc::now();
    let request;
    let playlist;
    let endpoint = match command {
        ApiCommand::Create {
            url,
            failover,
            user_agent,
            header,
        } => {
            request = CreateStream {
                url: url.clone(),
                failover_urls: failover.clone(),
                user_agent: user_agent.clone(),
                headers: header.iter().cloned().collect::<BTreeMap<_, _>>(),
                ..CreateStream::default()
            };
            Endpoint::CreateStream(&request)
        }
        ApiCommand::List => Endpoint::ListStreams,
        ApiCommand::Info { id } => Endpoint::Stream(id),
        ApiCommand::Delete { id } => Endpoint::DeleteStream(id),
        ApiCommand::Failover { id } => Endpoint::Failover(id),
        ApiCommand::Stats => Endpoint::Stats,
        ApiCommand::Clients { id: None } => Endpoint::ListClients,
        ApiCommand::Clients { id: Some(id) } => Endpoint::Client(id),
        ApiCommand::Health => Endpoint::Health,
        ApiCommand::Providers => Endpoint::ListProviders,
        ApiCommand::Playlists => Endpoint::ListPlaylists,
        ApiCommand::Import {
            url,
            name,
            refresh_interval_minutes,
            merge,
            provider,
        } => {
            playlist = CreatePlaylist {
                name: name.clone(),
                url: Some(url.clone()),
                refresh_interval_minutes: *refresh_interval_minutes,
                merge: merge.as_deref().map(|m| match m {
                    "name" => MergeKey::Name,
                    _ => MergeKey::TvgId,
                }),
                provider: provider.clone(),
                ..CreatePlaylist::default()
            };
            Endpoint::ImportPlaylist(&playlist)
        }
        ApiCommand::Refresh { id } => Endpoint::RefreshPlaylist(id),
        ApiCommand::Monitor { interval } => {
            return monitor::run(client, Duration::from_secs(*interval), json).await;
        }
    };
    if json {
        emit(&client.raw_json(endpoint).await?);
        return Ok(());
    }
    let text = match endpoint {
        Endpoint::CreateStream(request) => {
            let created = client.create_stream(request).await?;
            render::created(&created, &client.absolute(&created.stream.stream_endpoint))
        }
        Endpoint::ListStreams => render::stream_table(&client.list_streams().await?.streams, now),
        Endpoint::Stream(id) => {
            let detail = client.stream(id).await?;
            let play = render::play_path(detail.stream.stream_type, &detail.stream.stream_id);
            render::stream_detail(&detail, &client.absolute(&play), now)
        }
        Endpoint::DeleteStream(id) => render::deleted(&client.delete_stream(id).await?),
        Endpoint::Failover(id) => render::failover(&client.failover(id).await?),
        Endpoint::Stats => render::stats(&client.stats().await?, now),
        Endpoint::ListClients => render::client_table(&client.clients().await?.clients, now),
        Endpoint::Client(id) => render::client_detail(&client.client(id).await?, now),
        Endpoint::Health => render::health(&client.health().await?),
        Endpoint::ListProviders => {
            render::provider_table(&client.providers().await?.providers, now)
        }
        Endpoint::ListPlaylists => {
            render::playlist_table(&client.playlists().await?.playlists, now)
        }
        Endpoint::ImportPlaylist(request) => {
            let info = client.import_playlist(request).await?;
            render::playlist_summary(&info, &client.absolute(&info.playlist_url))
        }
        Endpoint::RefreshPlaylist(id) => {
            let info = client.refresh_playlist(id).await?;
            render::playlist_summary(&info, &client.absolute(&info.playlist_url))
        }
    };
    emit(&text);
    Ok(())
}

/// Prints to stdout, ending with a newline; a closed pipe (`m3u-client list | head -1`)
/// is not an error worth a panic.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    let _ = write!(stdout, "{text}{newline}").and_then(|()| stdout.flush());
}
