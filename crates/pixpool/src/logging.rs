//! Log set-up: every line names the process's role, slot and pid, so one
//! console shows fronts accepting, routing, and workers processing.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Prepends `role#slot[pid]` to the default format.
struct Prefixed {
    prefix: String,
    inner: Format<Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{} ", self.prefix)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`); colours
/// only on a terminal, so journald and files get plain text.
pub fn init(role: &str, slot: Option<u32>) {
    let ansi = std::io::stderr().is_terminal();
    let prefix = match slot {
        Some(s) => format!("{role}#{s}[{}]", std::process::id()),
        None => format!("{role}[{}]", std::process::id()),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = Prefixed {
        prefix,
        inner: Format::default().with_target(false).with_ansi(ansi),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(format)
        .try_init();
}
