/**
 * ibv_devices, ibv_devinfo, show_gids and ibdev2netdev with rdma-core's
 * output, for softroce devices (the device list: SOFTROCE_DEVICES or the
 * config file, see the README).
 */
import './epipe.js';
import { getDeviceList, openDevice, portsOf, type Device } from '../verbs/device.js';
import { bondEntries, cliDeviceList, openCliDevice } from './open-device.js';
import { gidToString, isIpv4Mapped } from '../roce/gid.js';
import { mtuToEnum } from '../roce/opcode.js';
import { parseArgs, runTool, toInt, type OptSpec } from './args.js';

type Out = (s: string) => void;
const stdout: Out = (s) => process.stdout.write(s + '\n');
const stderr: Out = (s) => process.stderr.write(s + '\n');

const guidHex = (g: bigint): string => g.toString(16).padStart(16, '0');
const guidColons = (g: bigint): string => guidHex(g).replace(/(.{4})(?!$)/g, '$1:');

async function withDevice<T>(name: string, fn: (d: Device) => T | Promise<T>): Promise<T> {
  // A device that is in use by another process cannot bind its address again:
  // then describe it without a socket (the attributes do not depend on it).
  let dev: Device;
  // A bond (SOFTROCE_BONDS) is made here (no control socket: the tool only describes it); one
  // whose ports another process holds is described over in-process links.
  const bond = bondEntries().some((b) => b.name === name);
  try {
    dev = await openCliDevice(name, { listen: false });
  } catch (e) {
    if (bond) return withBond(name, fn, e);
    const { MemNetwork } = await import('../roce/link/link.js');
    const { RealScheduler } = await import('../roce/sched.js');
    const desc = getDeviceList().find((d) => d.name === name)!;
    const sched = new RealScheduler();
    const net = new MemNetwork(sched);
    const ports = portsOf(desc);
    dev = await openDevice({
      name,
      scheduler: sched,
      ports: ports.map((p) => ({ address: p.address, netdev: p.netdev })),
      links: ports.map((p) => net.attach(p.address)),
    });
  }
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}

async function withBond<T>(name: string, fn: (d: Device) => T | Promise<T>, why: unknown): Promise<T> {
  const dev = await openCliDevice(name, { listen: false, memory: true }).catch(() => Promise.reject(why as Error));
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}

export async function ibvDevices(out: Out = stdout): Promise<number> {
  out(`    ${'device'.padEnd(16)}\t   node GUID`);
  out(`    ${'------'.padEnd(16)}\t----------------`);
  for (const d of cliDeviceList()) {
    const guid = await withDevice(d.name, (dev) => dev.attr.nodeGuid);
    out(`    ${d.name.padEnd(16)}\t${guidHex(guid)}`);
  }
  return 0;
}

const SPECS: OptSpec[] = [
  { short: 'd', long: 'ib-dev', arg: true },
  { short: 'i', long: 'ib-port', arg: true },
  { short: 'l', long: 'list', arg: false },
  { short: 'v', long: 'verbose', arg: false },
  { short: 'h', long: 'help', arg: false },
];

export async function ibvDevinfo(argv: string[], out: Out = stdout, err: Out = stderr): Promise<number> {
  let o;
  try {
    o = parseArgs(argv, SPECS);
  } catch (e) {
    err(`ibv_devinfo: ${(e as Error).message}`);
    return 1;
  }
  const list = cliDeviceList();
  if (o.opts.has('list')) {
    out(`${list.length} HCA${list.length === 1 ? '' : 's'} found:`);
    for (const d of list) out(`\t${d.name}`);
    return 0;
  }
  const want = o.opts.get('ib-dev');
  const devs = typeof want === 'string' ? list.filter((d) => d.name === want) : list;
  if (typeof want === 'string' && devs.length === 0) {
    err(`IB device '${want}' wasn't found`);
    return 255;
  }
  const onlyPort = toInt(o.opts.get('ib-port'), 'ib-port', 0);
  const verbose = o.opts.has('verbose');
  for (const d of devs) {
    await withDevice(d.name, (dev) => {
      const a = dev.query();
      out(`hca_id:\t${dev.name}`);
      out(`\ttransport:\t\t\tInfiniBand (0)`);
      out(`\tfw_ver:\t\t\t\t${a.fwVer}`);
      out(`\tnode_guid:\t\t\t${guidColons(a.nodeGuid)}`);
      out(`\tsys_image_guid:\t\t\t${guidColons(a.sysImageGuid)}`);
      out(`\tvendor_id:\t\t\t0x${a.vendorId.toString(16).padStart(4, '0')}`);
      out(`\tvendor_part_id:\t\t\t${a.vendorPartId}`);
      out(`\thw_ver:\t\t\t\t0x${a.hwVer.toString(16).toUpperCase()}`);
      if (verbose) {
        const rows: Array<[string, string | number]> = [
          ['max_mr_size', `0x${a.maxMrSize.toString(16)}`],
          ['page_size_cap', `0x${a.pageSizeCap.toString(16)}`],
          ['max_qp', a.maxQp],
          ['max_qp_wr', a.maxQpWr],
          ['max_sge', a.maxSge],
          ['max_sge_rd', a.maxSgeRd],
          ['max_cq', a.maxCq],
          ['max_cqe', a.maxCqe],
          ['max_mr', a.maxMr],
          ['max_pd', a.maxPd],
          ['max_qp_rd_atom', a.maxQpRdAtom],
          ['max_ee_rd_atom', 0],
          ['max_res_rd_atom', a.maxResRdAtom],
          ['max_qp_init_rd_atom', a.maxQpInitRdAtom],
          ['max_ee_init_rd_atom', 0],
          ['atomic_cap', `ATOMIC_${a.atomicCap} (1)`],
          ['max_ee', 0],
          ['max_rdd', 0],
          ['max_mw', 0],
          ['max_raw_ipv6_qp', 0],
          ['max_raw_ethy_qp', 0],
          ['max_mcast_grp', a.maxMcastGrp],
          ['max_mcast_qp_attach', a.maxMcastQpAttach],
          ['max_total_mcast_qp_attach', a.maxTotalMcastQpAttach],
          ['max_ah', 0x7fffffff],
          ['max_fmr', 0],
          ['max_srq', a.maxSrq],
          ['max_srq_wr', a.maxSrqWr],
          ['max_srq_sge', a.maxSrqSge],
          ['max_pkeys', a.maxPkeys],
          ['local_ca_ack_delay', a.localCaAckDelay],
        ];
        for (const [k, v] of rows) out(`\t${k}:${'\t'.repeat(Math.max(1, 3 - Math.floor((k.length + 1) / 8)))}${v}`);
      }
      out(`\tphys_port_cnt:\t\t\t${a.physPortCnt}`);
      for (let p = 1; p <= dev.ports.length; p++) {
        if (onlyPort && p !== onlyPort) continue;
        const pa = dev.queryPort(p);
        out(`\t\tport:\t${p}`);
        out(`\t\t\tstate:\t\t\t${pa.state === 'ACTIVE' ? 'PORT_ACTIVE (4)' : 'PORT_DOWN (1)'}`);
        out(`\t\t\tmax_mtu:\t\t${pa.maxMtu} (${mtuToEnum(pa.maxMtu)})`);
        out(`\t\t\tactive_mtu:\t\t${pa.activeMtu} (${mtuToEnum(pa.activeMtu)})`);
        out(`\t\t\tsm_lid:\t\t\t${pa.smLid}`);
        out(`\t\t\tport_lid:\t\t${pa.lid}`);
        out(`\t\t\tport_lmc:\t\t0x${pa.lmc.toString(16).padStart(2, '0')}`);
        out(`\t\t\tlink_layer:\t\t${pa.linkLayer}`);
        // Not in rdma-core's output: which datagram backend carries this port (native addon or Node dgram).
        out(`\t\t\tsoftroce_backend:\t${pa.backend}`);
        if (verbose) {
          out(`\t\t\tmax_msg_sz:\t\t0x${pa.maxMsgSz.toString(16)}`);
          out(`\t\t\tport_cap_flags:\t\t0x${pa.portCapFlags.toString(16).padStart(8, '0')}`);
          out(`\t\t\tmax_vl_num:\t\tinvalid value (0)`);
          out(`\t\t\tbad_pkey_cntr:\t\t0x0`);
          out(`\t\t\tqkey_viol_cntr:\t\t0x0`);
          out(`\t\t\tsm_sl:\t\t\t0`);
          out(`\t\t\tpkey_tbl_len:\t\t${pa.pkeyTblLen}`);
          out(`\t\t\tgid_tbl_len:\t\t${pa.gidTblLen}`);
          out(`\t\t\tsubnet_timeout:\t\t0`);
          out(`\t\t\tinit_type_reply:\t0`);
          out(`\t\t\tactive_width:\t\t${pa.activeWidth} (1)`);
          out(`\t\t\tactive_speed:\t\t${pa.activeSpeed} (1)`);
          out(`\t\t\tphys_state:\t\t${pa.physState === 'LINK_UP' ? 'LINK_UP (5)' : 'DISABLED (3)'}`);
          for (const g of dev.gidTable(p)) out(`\t\t\tGID[${String(g.index).padStart(3)}]:\t\t${gidToString(g.gid)}, ${g.type}`);
        }
        out('');
      }
    });
  }
  return 0;
}

/** The table rdma-core's show_gids script prints. */
export async function showGids(argv: string[], out: Out = stdout): Promise<number> {
  const want = argv[0];
  const wantPort = argv[1] ? Number(argv[1]) : 0;
  out('DEV\tPORT\tINDEX\tGID\t\t\t\t\tIPv4  \t\tVER\tDEV');
  out('---\t----\t-----\t---\t\t\t\t\t------------  \t---\t---');
  let n = 0;
  for (const d of cliDeviceList()) {
    if (want && d.name !== want) continue;
    await withDevice(d.name, (dev) => {
      for (let p = 1; p <= dev.ports.length; p++) {
        if (wantPort && p !== wantPort) continue;
        for (const g of dev.gidTable(p)) {
          const hex = Buffer.from(g.gid)
            .toString('hex')
            .replace(/(.{4})(?!$)/g, '$1:');
          const v4 = isIpv4Mapped(g.gid) ? `${g.gid[12]}.${g.gid[13]}.${g.gid[14]}.${g.gid[15]}` : '';
          out(`${dev.name}\t${p}\t${g.index}\t${hex}\t${v4.padEnd(14)}\t${g.type === 'RoCE v2' ? 'v2' : 'v1'}\t${g.netdev}`);
          n++;
        }
      }
    });
  }
  out(`n_gids_found=${n}`);
  return 0;
}

export async function ibdev2netdev(out: Out = stdout): Promise<number> {
  for (const d of cliDeviceList()) {
    await withDevice(d.name, (dev) => {
      for (let p = 1; p <= dev.ports.length; p++)
        out(`${dev.name} port ${p} ==> ${dev.ports[p - 1]!.netdev} (${dev.queryPort(p).state === 'ACTIVE' ? 'Up' : 'Down'})`);
    });
  }
  return 0;
}

export function toolMain(tool: 'ibv_devices' | 'ibv_devinfo' | 'show_gids' | 'ibdev2netdev'): Promise<void> {
  return runTool(
    (argv) => (tool === 'ibv_devices' ? ibvDevices() : tool === 'ibv_devinfo' ? ibvDevinfo(argv) : tool === 'show_gids' ? showGids(argv) : ibdev2netdev()),
    tool,
  );
}
