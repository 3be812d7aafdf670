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
pub fn init(role: &str, slot: Option<u32>, format: crate::config::LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let prefix = match slot {
        Some(s) => format!("{role}#{s}[{}]", std::process::id()),
        None => format!("{role}[{}]", std::process::id()),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if format == crate::config::LogFormat::Json {
        // One object per line, each naming the process: role, slot, pid.
        let mut fields = format!("\"role\":\"{role}\",\"pid\":{}", std::process::id());
        if let Some(s) = slot {
            fields.push_str(&format!(",\"slot\":{s}"));
        }
        let format = JsonWithProcess {
            fields,
            inner: Format::default()
                .json()
                .with_current_span(true)
                .with_span_list(false),
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(format)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .try_init();
        return;
    }
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

/// The JSON format with the process's fields added to every object.
struct JsonWithProcess {
    /// `"role":…,"pid":…[,"slot":…]`, ready to splice in.
    fields: String,
    inner: Format<tracing_subscriber::fmt::format::Json, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for JsonWithProcess
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
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{},{rest}", self.fields),
            None => writer.write_str(&line),
        }
    }
}
