//! Diesel table definitions, kept in step with `migrations/` by hand.

diesel::table! {
    likes (post_id, user_id) {
        post_id -> Text,
        user_id -> Text,
        liked -> Bool,
        event_at_micros -> BigInt,
        event_id -> Uuid,
        last_delta -> SmallInt,
    }
}

diesel::table! {
    like_counts (post_id) {
        post_id -> Text,
        count -> BigInt,
        version -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(likes, like_counts);
