//! Events published on each of the three topics end as the right mails, to
//! the right people, in the MailDev inbox: notifier, Kafka, mailer, SMTP.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use tanto_e2e::{TestEnv, event, ledger, standard_routing, subject, summary, wait_for_mails};

fn pairs(expected: &[(&str, &str)], domain: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = expected
        .iter()
        .map(|(local, text)| (format!("{local}{domain}"), subject(text)))
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_event_mails_customers_and_every_kind_of_staff_once() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    env.start("order-notifier");
    env.start("mailer");

    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.applied", &["P-100"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 6).await;
    let domain = env.domain();
    assert_eq!(
        summary(&mails),
        pairs(
            &[
                ("admin@c1.", "ご注文ありがとうございます"),
                ("buyer@c1.", "ご注文ありがとうございます"),
                ("east-sales-ml@", "販売先向け注文のご連絡"),
                ("ops@", "販売先向け注文のご連絡"),
                ("suzuki@", "販売先向け注文のご連絡"),
                ("tanaka@", "販売先向け注文のご連絡"),
            ],
            &domain
        )
    );

    let tanaka = mails
        .iter()
        .find(|m| m.recipient().starts_with("tanaka@"))
        .unwrap();
    for fact in [
        "ORD-000123",
        "サンプル株式会社",
        "C-1001",
        "クラウドバックアップ Pro",
        "24000",
    ] {
        assert!(
            tanaka.text.contains(fact),
            "staff mail lacks {fact}:\n{}",
            tanaka.text
        );
    }
    assert!(
        tanaka.text.contains("商品担当者・販売先担当者"),
        "{}",
        tanaka.text
    );
    assert!(tanaka.html.contains("ORD-000123"));
    assert_eq!(tanaka.to[0].name, "田中 一郎");

    let admin = mails
        .iter()
        .find(|m| m.recipient().starts_with("admin@"))
        .unwrap();
    assert!(admin.text.contains("山田 太郎 様"), "{}", admin.text);
    assert!(admin.text.contains("ORD-000123"));
    assert!(
        !admin.text.contains("商品担当者"),
        "customer mails carry no staff wording"
    );
    assert!(
        admin.message_id().ends_with("@tanto>"),
        "{:?}",
        admin.headers
    );

    let history = ledger(&env).await;
    assert_eq!(history.len(), 6);
    assert!(
        history.iter().all(|(_, status, _)| status == "sent"),
        "{history:?}"
    );
    let tanaka = history
        .iter()
        .find(|(to, _, _)| to.starts_with("tanaka@"))
        .unwrap();
    assert_eq!(tanaka.2, ["product_staff", "customer_staff"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_events_mail_product_and_customer_staff_but_not_company_wide() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    env.start("contract-notifier");
    env.start("mailer");

    env.publish(
        &env.topics.contracts,
        &event(&env.id, "contract.created", &["P-100"]),
    )
    .await;
    env.publish(
        &env.topics.contracts,
        &event(&env.id, "contract.confirmed", &["P-100"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 8).await;
    let domain = env.domain();
    assert_eq!(
        summary(&mails),
        pairs(
            &[
                ("admin@c1.", "ご契約(サービス)内容確定のご連絡"),
                ("buyer@c1.", "ご契約(サービス)内容確定のご連絡"),
                ("east-sales-ml@", "販売先向け契約作成のご連絡"),
                ("east-sales-ml@", "販売先向け契約内容確定のご連絡"),
                ("suzuki@", "販売先向け契約作成のご連絡"),
                ("suzuki@", "販売先向け契約内容確定のご連絡"),
                ("tanaka@", "販売先向け契約作成のご連絡"),
                ("tanaka@", "販売先向け契約内容確定のご連絡"),
            ],
            &domain
        )
    );
    let created = mails
        .iter()
        .find(|m| m.subject.contains("契約作成"))
        .unwrap();
    assert!(created.text.contains("CNT-000045"), "{}", created.text);
    assert!(
        created.text.contains("6-3-2"),
        "staff mails show their management number"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quote_event_mails_the_customer_and_the_staff_in_charge() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    env.start("quote-notifier");
    env.start("mailer");

    env.publish(
        &env.topics.quotes,
        &event(&env.id, "quote.issued", &["P-100"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 5).await;
    let domain = env.domain();
    assert_eq!(
        summary(&mails),
        pairs(
            &[
                ("admin@c1.", "お見積書発行のご連絡"),
                ("buyer@c1.", "お見積書発行のご連絡"),
                ("east-sales-ml@", "販売先向け見積発行のご連絡"),
                ("suzuki@", "販売先向け見積発行のご連絡"),
                ("tanaka@", "販売先向け見積発行のご連絡"),
            ],
            &domain
        )
    );
    let staff = mails
        .iter()
        .find(|m| m.recipient().starts_with("suzuki@"))
        .unwrap();
    assert!(staff.text.contains("QUO-000678"), "{}", staff.text);
}
