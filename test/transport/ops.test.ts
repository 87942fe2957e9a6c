/**
 * The operations suite (ops-suite.ts) over RoCEv2/IPv4 and RoCEv2/IPv6: the
 * transport must behave the same whatever the address family (issue 9: RC over
 * IPv6 once dropped every packet as from a stranger).
 */
import { opsSuite } from './ops-suite.js';

opsSuite('IPv4', ['10.0.0.1', '10.0.0.2']);
// 2001:db8::/32 is the documentation prefix: no host interface has it (the in-memory network sends nothing).
opsSuite('IPv6', ['2001:db8::a', '2001:db8::b']);
