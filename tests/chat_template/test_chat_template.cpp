#include <gtest/gtest.h>
#include "tokenizer/chat_template.h"
using namespace swiftkv;
TEST(ChatTemplate, Smoke) {
    ChatTemplate t("{% for m in messages %}{{ m.role }}: {{ m['content'] | trim }}\n{% endfor %}");
    EXPECT_EQ(t.render({{"messages", {{{"role", "user"}, {"content", " hi "}}}}}), "user: hi\n");
}
