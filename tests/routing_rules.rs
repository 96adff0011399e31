//! The routing rules of docs/routing.md, each proved end to end: an order
//! event goes through the order notifier and the mailer into MailDev.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use tanto_e2e::{
    TestEnv, event, ledger, mails_for, standard_routing, subject, summary, wait_for_mails,
};

const STAFF_SUBJECT: &str = "販売先向け注文のご連絡";
const CUSTOMER_SUBJECT: &str = "ご注文ありがとうございます";

async fn started(routing: impl FnOnce(&TestEnv) -> String) -> TestEnv {
    let mut env = TestEnv::new().await;
    env.apply(&routing(&env));
    env.start("order-notifier");
    env.start("mailer");
    env
}

fn recipients(mails: &[tanto_e2e::Mail], subject_text: &str) -> Vec<String> {
    let wanted = subject(subject_text);
    let mut to: Vec<String> = mails
        .iter()
        .filter(|m| m.subject == wanted)
        .map(|m| {
            m.recipient()
                .split('@')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    to.sort();
    to
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_reached_through_several_groups_and_classes_gets_one_mail() {
    // tanaka is in `solution` and `east`; both are linked to P-100 and P-200
    // here, and `east` to the customer: four ways to reach one person.
    let env = started(|env| {
        standard_routing(env)
            .replace("groups: [solution] }", "groups: [solution, east] }")
            .replace("groups: [] }", "groups: [east, solution] }")
    })
    .await;

    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.applied", &["P-100", "P-200"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 6).await;
    assert_eq!(
        recipients(&mails, STAFF_SUBJECT),
        ["east-sales-ml", "ops", "suzuki", "tanaka"]
    );
    let history = ledger(&env).await;
    let tanaka: Vec<_> = history
        .iter()
        .filter(|(to, _, _)| to.starts_with("tanaka@"))
        .collect();
    assert_eq!(tanaka.len(), 1, "{history:?}");
    assert_eq!(tanaka[0].2, ["product_staff", "customer_staff"]);
    let ml = history
        .iter()
        .find(|(to, _, _)| to.starts_with("east-sales-ml@"))
        .unwrap();
    assert_eq!(
        ml.2,
        ["product_staff", "customer_staff"],
        "the list is in `east` too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_address_in_two_spellings_gets_one_mail() {
    let env = started(|env| {
        standard_routing(env)
            .replace("email: east-sales-ml@", "email: TANAKA@")
            .replace("name: 東日本営業ML", "name: 田中 (別アカウント)")
    })
    .await;

    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.applied", &["P-100"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 5).await;
    let staff = recipients(&mails, STAFF_SUBJECT);
    assert_eq!(staff.len(), 3, "{staff:?}");
    assert_eq!(
        staff
            .iter()
            .filter(|to| to.eq_ignore_ascii_case("tanaka"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inactive_account_receives_nothing() {
    let env = started(standard_routing).await;

    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.applied", &["P-100"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 6).await;
    assert!(
        !mails.iter().any(|m| m.recipient().starts_with("sato@")),
        "{:?}",
        summary(&mails)
    );
    assert!(
        !ledger(&env)
            .await
            .iter()
            .any(|(to, _, _)| to.starts_with("sato@"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_class_that_resolves_to_nobody_is_no_error() {
    // P-200 has no groups, and customer C-1001 here has no groups, no admin
    // and no invitees: only the company-wide class reaches anyone.
    let env = started(|env| {
        let d = env.domain();
        standard_routing(env)
            .replace("    groups: [east]\n", "    groups: []\n")
            .replace(
                &format!("    admin: {{ email: admin@c1.{d}, name: 山田 太郎 }}\n"),
                "",
            )
            .replace(
                &format!("    invitees: [ {{ email: buyer@c1.{d}, name: 佐藤 花子 }} ]\n"),
                "",
            )
    })
    .await;

    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.applied", &["P-200"]),
    )
    .await;
    // A second event proves the notifier went on after the empty classes.
    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.confirmed", &["P-200"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 2).await;
    assert_eq!(
        summary(&mails),
        [
            (format!("ops@{}", env.domain()), subject(STAFF_SUBJECT)),
            (
                format!("ops@{}", env.domain()),
                subject("販売先向け注文確定のご連絡")
            ),
        ]
    );
    let history = ledger(&env).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history
            .iter()
            .all(|(_, status, classes)| status == "sent" && classes == &["company_wide"])
    );
    let routed = env
        .db()
        .await
        .query(
            "SELECT event_type, empty_classes FROM routed_events ORDER BY event_type",
            &[],
        )
        .await
        .unwrap();
    let empty: Vec<(String, Vec<String>)> =
        routed.iter().map(|row| (row.get(0), row.get(1))).collect();
    let classes = |number: &str| {
        [
            "product_staff",
            "customer_staff",
            "customer_admin",
            "customer_invitee",
        ]
        .into_iter()
        .map(|class| format!("{number}:{class}"))
        .collect::<Vec<_>>()
    };
    let staff_and_customer = |customer: &str, staff: &str| {
        let mut all = classes(customer)[2..].to_vec();
        all.extend(classes(staff)[..2].to_vec());
        all
    };
    assert_eq!(
        empty,
        [
            (
                "order.applied".to_string(),
                staff_and_customer("5-1-1", "5-1-2")
            ),
            (
                "order.confirmed".to_string(),
                staff_and_customer("5-1-3", "5-1-4")
            ),
        ],
        "the history shows every class that reached nobody"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mail_switched_off_for_a_tenant_is_not_sent() {
    let env = started(|env| {
        standard_routing(env).replace("disabled_mails: []", "disabled_mails: [5-1-1]")
    })
    .await;

    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.applied", &["P-100"]),
    )
    .await;

    let mails = wait_for_mails(&env.domain(), 4).await;
    assert_eq!(recipients(&mails, STAFF_SUBJECT).len(), 4);
    assert!(
        recipients(&mails, CUSTOMER_SUBJECT).is_empty(),
        "{:?}",
        summary(&mails)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn data_never_crosses_tenants() {
    // Two tenants with the same product, customer and account ids; the
    // second tenant's people use another domain.
    let env = started(standard_routing).await;
    let other_tenant = format!("{}-other", env.id);
    let other_domain = format!("other-{}", env.domain());
    env.apply(
        &standard_routing(&env)
            .replace(
                &format!("tenant: {}", env.id),
                &format!("tenant: {other_tenant}"),
            )
            .replace(&env.domain(), &other_domain),
    );

    env.publish(
        &env.topics.orders,
        &event(&env.id, "order.applied", &["P-100"]),
    )
    .await;
    let mails = wait_for_mails(&env.domain(), 6).await;
    assert_eq!(mails.len(), 6);
    assert!(
        mails_for(&other_domain).await.is_empty(),
        "the other tenant's staff got mail"
    );

    env.publish(
        &env.topics.orders,
        &event(&other_tenant, "order.applied", &["P-100"]),
    )
    .await;
    assert_eq!(wait_for_mails(&other_domain, 6).await.len(), 6);
    assert_eq!(
        mails_for(&env.domain()).await.len(),
        6,
        "the first tenant got the other's mail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_published_twice_gives_one_mail_per_address() {
    let env = started(standard_routing).await;
    let order = event(&env.id, "order.applied", &["P-100"]);

    env.publish(&env.topics.orders, &order).await;
    env.publish(&env.topics.orders, &order).await;

    let mails = wait_for_mails(&env.domain(), 6).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        mails_for(&env.domain()).await.len(),
        6,
        "{:?}",
        summary(&mails)
    );
}
