//! Routes `order.*` events to deliveries; see `tanto::notifier`.

use std::process::ExitCode;

use tanto::event::Family;

#[tokio::main]
async fn main() -> ExitCode {
    tanto::app::serve("order-notifier", |settings, shutdown| async move {
        tanto::notifier::run(&settings, Family::Order, shutdown).await
    })
    .await
}
