/* 32-bit entry for PVH (ebx = hvm_start_info) and multiboot v1 (eax = 0x2BADB002, ebx = multiboot_info),
 * then long mode: own GDT, identity-mapped first 4 GiB with 2 MiB pages, call c_entry(protocol, info). */
#define PROTO_PVH 1
#define PROTO_MULTIBOOT 2

	.section .multiboot_or_note, "a"
#ifdef MULTIBOOT
	.align 4
mb_header:
	.long 0x1BADB002
	.long 0x00000003              /* page-align modules, memory info */
	.long -(0x1BADB002 + 0x00000003)
#endif

#ifdef PVH
	.section .note.Xen, "a"
	.align 4
	.long 4                       /* namesz "Xen\0" */
	.long 4                       /* descsz */
	.long 18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long entry32
#endif

	.section .text.entry, "ax"
	.code32
	.globl entry32
entry32:
	cli
	movl %ebx, %esi               /* boot info pointer */
#ifdef PVH
	movl $PROTO_PVH, %edi
#else
	movl $PROTO_MULTIBOOT, %edi
#endif
	lgdt gdt_descriptor
	ljmp $0x08, $1f
1:	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	movl $stack_top, %esp

	/* PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3; PDk[i] = 2 MiB page (k*1G + i*2M) */
	movl $pml4, %ebx
	movl $pdpt, %eax
	orl $3, %eax
	movl %eax, (%ebx)
	movl $pdpt, %ebx
	movl $pd_low, %eax
	orl $3, %eax
	xorl %ecx, %ecx
2:	movl %eax, (%ebx,%ecx,8)
	addl $4096, %eax
	incl %ecx
	cmpl $4, %ecx
	jne 2b
	movl $pd_low, %ebx
	xorl %ecx, %ecx
3:	movl %ecx, %eax
	shll $21, %eax
	orl $0x83, %eax               /* present, writable, 2 MiB */
	movl %eax, (%ebx,%ecx,8)
	incl %ecx
	cmpl $2048, %ecx
	jne 3b

	movl %cr4, %eax
	orl $0x20, %eax               /* PAE */
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $0xC0000080, %ecx        /* EFER */
	rdmsr
	orl $0x100, %eax              /* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax         /* PG | PE */
	movl %eax, %cr0
	ljmp $0x18, $entry64

	.code64
entry64:
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movabsq $stack_top, %rsp
	/* edi = protocol, esi = info (zero-extended by the 32-bit moves above) */
	movl %edi, %edi
	movl %esi, %esi
	call c_entry
4:	cli
	hlt
	jmp 4b

/* Interrupt entry for the guests that take interrupts: saves the general registers, calls
 * interrupt_handler(vector), returns with IRETQ (the one return that KVM's emulator handles here). */
	.globl isr_serial
isr_serial:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	movl $0x24, %edi
	call interrupt_handler
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	iretq

	.globl isr_spurious
isr_spurious:
	iretq

	.section .rodata
	.align 8
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff          /* 0x08: 32-bit code */
	.quad 0x00cf92000000ffff          /* 0x10: data */
	.quad 0x00af9a000000ffff          /* 0x18: 64-bit code */
gdt_end:
	.globl gdt_descriptor
gdt_descriptor:
	.word gdt_end - gdt - 1
	.long gdt

	.section .bss
	.align 4096
	.globl pml4, pdpt
pml4:	.skip 4096
pdpt:	.skip 4096
pd_low:	.skip 4 * 4096
	.align 16
stack:	.skip 16384
stack_top:
