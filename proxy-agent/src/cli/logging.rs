//! The agent's log: text (coloured only when stderr is a terminal, so that what a container
//! runtime captures carries no escape codes) or JSON lines with the span fields, like
//! kube-proxy's `--logging-format=json`.

use std::io::IsTerminal as _;

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogFormat;

/// A subscriber writing `format` to `writer`, filtered by `filter`; `ansi` colours text.
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(writer)
                .finish(),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_env_filter(filter)
                .with_writer(writer)
                .finish(),
        ),
    }
}

/// Installs the agent's log on stderr: `format`, colour only on a terminal.
pub fn init(filter: EnvFilter, format: LogFormat) {
    let ansi = format == LogFormat::Text && std::io::stderr().is_terminal();
    let _ =
        tracing::subscriber::set_global_default(subscriber(filter, format, ansi, std::io::stderr));
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Self;
        fn make_writer(&'w self) -> Self {
            self.clone()
        }
    }

    fn log(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let sub = subscriber(EnvFilter::new("info"), format, ansi, buffer.clone());
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("sync", kind = "partial", services = 3);
            let _guard = span.enter();
            tracing::info!(elements = 17, "applied");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_carry_the_event_and_its_span_fields() {
        let text = log(LogFormat::Json, false);
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect(&text);
        assert_eq!(line["fields"]["message"], "applied");
        assert_eq!(line["fields"]["elements"], 17);
        assert_eq!(line["span"]["name"], "sync");
        assert_eq!(line["span"]["kind"], "partial");
        assert_eq!(line["spans"][0]["services"], 3);
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn text_has_colour_codes_only_when_asked() {
        let plain = log(LogFormat::Text, false);
        assert!(
            plain.contains("applied") && plain.contains("kind=\"partial\""),
            "{plain}"
        );
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        assert!(log(LogFormat::Text, true).contains('\u{1b}'));
    }
}
