#include "cmdline.h"
#include "string.h"

static char line_copy[1024];    /* our own copy: the loader's buffer may be anywhere in RAM */

void cmdline_init(const char *line)
{
    size_t n = 0;
    if (line)
        for (; line[n] && n + 1 < sizeof line_copy; n++)
            line_copy[n] = line[n];
    line_copy[n] = '\0';
}

const char *cmdline_raw(void) { return line_copy; }

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool cmdline_get(const char *key, char *buf, size_t size)
{
    size_t klen = strlen(key);
    const char *p = line_copy;
    bool found = false;
    while (*p) {
        while (is_space(*p))
            p++;
        const char *word = p;
        while (*p && !is_space(*p))
            p++;
        /* The last occurrence wins, as with most command lines. */
        if ((size_t)(p - word) > klen && !strncmp(word, key, klen) && word[klen] == '=') {
            const char *v = word + klen + 1;
            size_t n = 0;
            while (v + n < p && n + 1 < size) {
                buf[n] = v[n];
                n++;
            }
            if (size)
                buf[n] = '\0';
            found = true;
        }
    }
    return found;
}

uint32_t cmdline_u32(const char *key, uint32_t def)
{
    char buf[24];
    if (!cmdline_get(key, buf, sizeof buf) || !buf[0])
        return def;
    uint32_t v = 0, base = 10;
    const char *s = buf;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (; *s; s++) {
        uint32_t d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else return def;
        v = v * base + d;
    }
    return v;
}

bool list_contains(const char *list, const char *item)
{
    size_t ilen = strlen(item);
    const char *p = list;
    while (*p) {
        const char *e = p;
        while (*e && *e != ',')
            e++;
        if ((size_t)(e - p) == ilen && !strncmp(p, item, ilen))
            return true;
        p = *e ? e + 1 : e;
    }
    return false;
}
