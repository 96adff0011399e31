//! Renders and sends deliveries; see `tanto::mailer`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tanto::app::serve("mailer", |settings, shutdown| async move {
        tanto::mailer::run(&settings, shutdown).await
    })
    .await
}
