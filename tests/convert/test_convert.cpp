#include <gtest/gtest.h>
TEST(Convert, Placeholder) {}
