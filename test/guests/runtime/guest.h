/* Runtime of Partita's test guests: freestanding 64-bit C, general registers only. */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define PROTO_PVH 1
#define PROTO_MULTIBOOT 2
#define MAX_MEM 32
#define MAX_MODS 8

struct mem_entry { u64 base, size; u32 type; };
struct module { u64 start, size; const char *cmdline; };
struct boot_info {
  int protocol;
  const char *cmdline;
  int nmem;
  struct mem_entry mem[MAX_MEM];
  int nmods;
  struct module mods[MAX_MODS];
};

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }

void putc(char c);
void puts(const char *s);
void printf(const char *fmt, ...);
__attribute__((noreturn)) void exit(u32 value);
const char *cmdline_value(const char *key);          /* value of key=... or 0 */
u64 cmdline_number(const char *key, u64 fallback);
void map_2m(u64 address);                            /* identity-map the 2 MiB page holding address */
int main(struct boot_info *bi);
void interrupt_handler(int vector);
extern char _end[];
extern void isr_serial(void);
extern void isr_spurious(void);
#endif
